//! Integration tests: the server in-process on an ephemeral port, driven over real sockets.
//! One test binary (matklad's advice); one module per behaviour; `support` holds the harness.

mod cluster;
mod heartbeat;
mod http2;
mod limits;
mod mercure;
mod monitor;
mod producer;
mod publish;
mod resume;
mod security;
mod shutdown;
mod slow;
mod store;
mod stream;
mod stuck;
mod support;
mod tls;
