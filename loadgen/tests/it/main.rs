//! loadgen's integration tests: one binary, one module per behaviour, every test against a
//! real server on loopback sockets (an in-process ringcast, or a tiny nchan-like stand-in),
//! each short (a few seconds) and bounded.

mod delivery;
mod generic;
mod secure;
mod slow;
mod support;
