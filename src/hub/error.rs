//! Why the hub refused something. Every refusal says what was wrong and what to do.

/// Why a topic list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// No topic given.
    #[error("at least one topic is required (add `topic=NAME`)")]
    Missing,
    /// Too many topics in one request.
    #[error("{count} topics in one request; the limit is {max}")]
    TooMany {
        /// Topics given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A topic name is empty.
    #[error("a topic name is empty")]
    Empty,
    /// A topic name is too long.
    #[error("topic name of {len} bytes is longer than the limit of {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A topic name has a control character.
    #[error("topic name contains the control character U+{code:04X} at byte {at}; use printable characters")]
    ControlChar {
        /// The character's code point.
        code: u32,
        /// Its byte offset.
        at: usize,
    },
    /// The hub already has its maximum number of topics.
    #[error("the topic limit ({max}) is reached; retry later or raise --max-topics")]
    Full {
        /// The limit.
        max: usize,
    },
}

/// Why a publish was refused. Nothing of a refused batch is published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// An entry's topics are invalid.
    #[error("{}{error}", entry_prefix(*index))]
    Topic {
        /// What is wrong.
        error: TopicError,
        /// Which entry of the batch, if a batch.
        index: Option<usize>,
    },
    /// An entry's fields cannot be encoded.
    #[error("{}{error}", entry_prefix(*index))]
    Frame {
        /// What is wrong.
        error: crate::wire::frame::FrameError,
        /// Which entry of the batch, if a batch.
        index: Option<usize>,
    },
    /// This hub is fed by a cluster log; publish through the cluster instead.
    #[error("this hub is fed by the cluster log; publish through it (POST /publish, or cluster::Cluster::publish)")]
    Fed,
    /// An entry's frame is larger than the limit.
    #[error("{}the event is {size} bytes encoded; the limit is {max}", entry_prefix(*index))]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
        /// Which entry of the batch, if a batch.
        index: Option<usize>,
    },
    /// The hub is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The durable log did not take the batch (nothing of it was published).
    #[error(transparent)]
    Journal(#[from] super::JournalError),
}

fn entry_prefix(index: Option<usize>) -> String {
    index.map(|i| format!("entry {}: ", i + 1)).unwrap_or_default()
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The topic list is invalid.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The hub is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// `Hub::new` was called outside a tokio runtime.
#[derive(Debug, thiserror::Error)]
#[error("ringcast::Hub must be created inside a tokio runtime (it spawns its clock and ring dispatchers)")]
pub struct NoRuntime;
