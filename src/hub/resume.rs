//! Where a subscription starts: the resume plan.
//!
//! `Last-Event-ID: E-S` resumes exactly when, in every topic of the subscription, the ring
//! still holds the first event after `S` and that event's predecessor in the topic is at or
//! before `S` (each frame records its predecessor, [`Frame::prev`](super::topics::Frame::prev)), or when nothing
//! after `S` was ever published to the topic. Otherwise the subscription starts at the
//! current position and its first frame is the `reset` event ([`ResetReason`]), telling the
//! client to resync. A hub with a log (the cluster's, or a durable one) asks it for what its
//! rings no longer hold ([`Gap`]).
//!
//! Planning ([`plan`]) reads the rings without locks; a ring can move on between the plan and
//! the cursors being placed. A cursor that can no longer be placed where the plan says turns
//! a resume into a `reset` (`too-old`), never into a jump past events (see `Hub::open`).

use bytes::Bytes;

use crate::ring::Cursor;
use crate::sync::Arc;

use super::id::{EventId, Ids, Mode};
use super::topics::{Frame, Topic};
use crate::ring::Lookup;
use crate::wire::frame::Event;

/// Why a `Last-Event-ID` could not be resumed exactly; sent as the `reset` event's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The ring no longer holds the events after that id.
    TooOld,
    /// The id was issued before this server (re)started.
    Restarted,
    /// The id is malformed, or from the future, or from another server.
    Unknown,
    /// The cluster log lost its history (Redis restarted empty): resync everything.
    Lost,
}

impl ResetReason {
    /// The reason as it appears in the `reset` event's data.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooOld => "too-old",
            Self::Restarted => "restarted",
            Self::Unknown => "unknown",
            Self::Lost => "lost",
        }
    }
}

/// How a subscription started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// No `Last-Event-ID`: from the next event.
    Fresh,
    /// Exactly after the given id.
    Resumed,
    /// After a `reset` event, from the next event.
    Reset(ResetReason),
}

/// Events a fed subscription must fetch from the cluster log before its live stream: those
/// after `after` up to and including `through` (the head when it subscribed; its cursors
/// start right after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The client's last event (order key).
    pub after: u64,
    /// The last event the log must supply (order key).
    pub through: u64,
}

/// What the client's `Last-Event-ID` asks for, checked against this hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// No id: from now.
    Fresh,
    /// After this order key.
    After(u64),
    /// An id this hub cannot resume from.
    Reset(ResetReason),
}

impl Wanted {
    /// Reads `last_event_id` for a hub whose last published key is `head`.
    pub(crate) fn of(ids: Ids, head: u64, last_event_id: Option<&str>) -> Self {
        let Some(text) = last_event_id else { return Self::Fresh };
        let fed = ids.mode == Mode::Fed;
        let Ok(id) = text.trim().parse::<EventId>() else { return Self::Reset(ResetReason::Unknown) };
        match ids.key_of(id) {
            // A fed node may be behind the client (it saw the event on a faster node).
            Some(key) if key <= head || fed => Self::After(key),
            None if !fed && id.epoch < ids.epoch => Self::Reset(ResetReason::Restarted),
            _ => Self::Reset(ResetReason::Unknown),
        }
    }
}

/// Where one topic's cursor goes: the ring position of the first event after the key asked
/// for, and whether starting there loses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seek {
    pub(crate) position: u64,
    pub(crate) exact: bool,
}

/// Finds the first event after `after` in `topic` by binary search over its ring
/// (O(log capacity), no scan), and whether a resume there is exact (module docs).
/// `dropped_through` is the largest key a dropped topic of the same name may have held.
pub(crate) fn seek_after(topic: &Topic, after: u64, dropped_through: u64) -> Seek {
    let ring = &topic.ring;
    let tail = ring.tail();
    let oldest = tail.saturating_sub(ring.capacity() as u64);
    let is_after = |position: u64| match ring.get(position) {
        Lookup::Ready(entry) => entry.value().seq > after,
        Lookup::NotYet => true,          // newest: being published now
        Lookup::Overwritten(_) => false, // gone: older than anything held
    };
    let (mut low, mut high) = (oldest, tail);
    while low < high {
        let mid = low + (high - low) / 2;
        if is_after(mid) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    // Nothing of an earlier incarnation of the topic was after `after`.
    let incarnation_ok = after >= topic.created_after || dropped_through <= after;
    let first_prev_ok = |prev: u64| prev <= after || (prev == topic.created_after && incarnation_ok);
    let exact = match ring.get(low) {
        Lookup::Ready(first) if first.value().seq > after => first_prev_ok(first.value().prev),
        // `low` is being published now (or nothing after `after` is held): decide by the
        // event before it, which the search found at or before `after`.
        Lookup::NotYet | Lookup::Ready(_) => match low.checked_sub(1).map(|before| ring.get(before)) {
            None => incarnation_ok,
            Some(Lookup::Ready(before)) => before.value().seq <= after,
            Some(Lookup::NotYet | Lookup::Overwritten(_)) => false,
        },
        Lookup::Overwritten(_) => false, // lapped while we looked
    };
    Seek { position: low, exact }
}

/// The plan of a subscription: how it starts and where each of its cursors goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) start: Start,
    /// One ring position per topic, in the subscription's topic order.
    pub(crate) positions: Vec<u64>,
    /// Events to fetch from the cluster log first (a fed hub).
    pub(crate) gap: Option<Gap>,
    /// Frames at or before this key are skipped (a fed node behind the client).
    pub(crate) skip_through: Option<u64>,
}

/// Plans a subscription of a hub whose last published key is `head`; `seek(k)` seeks every
/// topic after key `k`; `has_log`: a log (the cluster's, or a durable one) can fill what the
/// rings no longer hold.
pub(crate) fn plan(wanted: Wanted, has_log: bool, head: u64, seek: impl Fn(u64) -> Vec<Seek>) -> Plan {
    let from_head = |start, gap, skip_through| Plan {
        start,
        positions: seek(head).iter().map(|s| s.position).collect(),
        gap,
        skip_through,
    };
    match wanted {
        Wanted::Fresh => from_head(Start::Fresh, None, None),
        Wanted::Reset(reason) => from_head(Start::Reset(reason), None, None),
        // Start at the head and skip what the client already has as it arrives.
        Wanted::After(after) if after > head => from_head(Start::Resumed, None, Some(after)),
        Wanted::After(after) => {
            let seeks = seek(after);
            if seeks.iter().all(|s| s.exact) {
                let positions = seeks.iter().map(|s| s.position).collect();
                Plan { start: Start::Resumed, positions, gap: None, skip_through: None }
            } else if has_log {
                // Older than the rings: the log may still hold it.
                from_head(Start::Resumed, Some(Gap { after, through: head }), None)
            } else {
                from_head(Start::Reset(ResetReason::TooOld), None, None)
            }
        }
    }
}

/// One cursor per topic of a subscription, with its topic.
pub(crate) type Cursors = Vec<(Arc<Topic>, Cursor<Frame>)>;

/// Places a cursor per topic where `plan` says (`head` is the key it was planned at). A ring
/// that moved past a planned position since (it lapped it) never makes the subscription jump
/// past events: the plan is made again from the current head (`published`, `seek`), and a
/// resume becomes a `reset` (`too-old`). Returns the cursors, the plan and the head they
/// follow.
pub(crate) fn place(
    topics: &[Arc<Topic>],
    mut plan: Plan,
    mut head: u64,
    published: impl Fn() -> u64,
    seek: impl Fn(u64) -> Vec<Seek>,
) -> (Cursors, Plan, u64) {
    for _ in 0..3 {
        let placed: Option<Vec<_>> = topics
            .iter()
            .zip(&plan.positions)
            .map(|(topic, &position)| Some((Arc::clone(topic), topic.ring.cursor_at(position).ok()?)))
            .collect();
        if let Some(mut cursors) = placed {
            cursors.shrink_to_fit(); // it lives as long as the stream: no spare capacity
            return (cursors, plan, head);
        }
        head = published();
        if plan.start == Start::Resumed {
            plan.start = Start::Reset(ResetReason::TooOld);
        }
        plan.gap = None;
        plan.skip_through = None;
        plan.positions = seek(head).iter().map(|seek| seek.position).collect();
    }
    // Rings overwritten faster than they can be sought: start at their tails, which is what a
    // fresh start or a reset promises.
    (topics.iter().map(|topic| (Arc::clone(topic), topic.ring.subscribe())).collect(), plan, head)
}

/// The `reset` frame: its `id` is the current head, so a later reconnect resumes from there.
pub(crate) fn reset_frame(ids: Ids, reason: ResetReason, head: u64, given: &str) -> Bytes {
    reset_frame_with_id(&ids.id_of(head).to_string(), reason, given)
}

/// The `reset` frame with the id `id` (a routed subscription's: the newest routed event's).
pub(crate) fn reset_frame_with_id(id: &str, reason: ResetReason, given: &str) -> Bytes {
    let data = serde_json::json!({ "reason": reason.as_str(), "lastEventId": given }).to_string();
    let event = Event { id: Some(id), event: Some("reset"), data: &data, ..Event::default() };
    // The id is digits and '-', the event name is fixed: encoding cannot fail. Degrade safely.
    event.encode().unwrap_or_else(|_| Bytes::from_static(b"event: reset\ndata: {}\n\n"))
}
