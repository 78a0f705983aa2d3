//! The state machines, as pure functions: a workspace's ([`step`]) and a
//! stack's ([`stack_step`]). The engine runs every change through them; a host
//! can ask them what a request would do without touching a store.

pub use crate::stack::{
    StackEntry, StackEvent, StackEventName, StackGraph, StackOperation, stack_step,
};
pub use crate::state::{EventName, Transition, WorkspaceEvent, step};
