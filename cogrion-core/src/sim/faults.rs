//! [`FaultPlan`]: seeded, scriptable fault injection shared by the simulated cloud
//! and the simulated executors.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::Error;
use crate::ids::StackName;
use crate::provisioner::InfraLayer;

/// The `retry_after` a [`Fault::Throttle`] asks for unless
/// [`FaultPlan::with_retry_after`] says otherwise.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(500);

/// The `detail` of the [`Error::Unavailable`] a [`Fault::LostResponse`] returns.
pub const RESPONSE_LOST: &str = "response lost";

/// One injected failure of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The service asks to slow down: [`Error::Throttled`] with a `retry_after`,
    /// before anything is done.
    Throttle,
    /// The service cannot be reached: [`Error::Unavailable`], before anything is
    /// done.
    Unavailable,
    /// The call does its work, then its answer is lost: [`Error::Unavailable`] with
    /// the detail [`RESPONSE_LOST`]. The caller cannot tell that anything happened.
    ///
    /// Where a call makes several changes, the answer of its *first* change is the
    /// one lost: the change is made and the call stops there, before saving
    /// anything to its checkpoint — like a process that dies between a cloud API
    /// call and the checkpoint write. A call that changes nothing loses its final
    /// answer.
    LostResponse,
    /// The service refuses the call for good: [`Error::Rejected`], before anything
    /// is done. Injected once with [`FaultPlan::inject_next`]; a lasting refusal is
    /// [`FaultPlan::fail_permanently`].
    Reject,
}

/// What a call acts on, for targeted faults.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultTarget {
    /// Every `provision`, `update` and `destroy` of one infrastructure layer
    /// ([`SimulatedCloud`](super::SimulatedCloud)).
    Layer(InfraLayer),
    /// Every `apply`, `destroy` and `status` of the stack with this name
    /// ([`SimulatedExecutor`](super::SimulatedExecutor)), in any workspace.
    Stack(StackName),
}

impl From<InfraLayer> for FaultTarget {
    fn from(layer: InfraLayer) -> Self {
        Self::Layer(layer)
    }
}

impl From<StackName> for FaultTarget {
    fn from(stack: StackName) -> Self {
        Self::Stack(stack)
    }
}

impl fmt::Display for FaultTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Layer(layer) => write!(f, "layer {layer}"),
            Self::Stack(stack) => write!(f, "stack {stack}"),
        }
    }
}

/// A fault that was injected, as [`FaultPlan::injected`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    /// The call's number among all calls the plan decided on, from 1.
    pub call: u64,
    /// The method called (`provision`, `update`, `destroy`, `apply`, `status`).
    pub operation: &'static str,
    /// What the call acted on.
    pub target: FaultTarget,
    /// The fault.
    pub fault: Fault,
}

/// When and how simulated services fail.
///
/// A plan is a handle: clones share one state, so a test keeps a clone, gives
/// another to a [`SimulatedCloud`](super::SimulatedCloud) or
/// [`SimulatedExecutor`](super::SimulatedExecutor), and changes the plan while
/// they run. One plan may be shared by several services; its decisions then
/// depend on the order of all their calls.
///
/// # How a call's fault is decided
/// Every call of a service method (except `describe`, which never fails) asks
/// the plan once, in this order:
/// 1. If the plan is [disabled](Self::set_enabled): no fault.
/// 2. One number is drawn from the seeded generator (always, so that scripted
///    and permanent faults do not shift the random sequence of later calls).
/// 3. The first scripted fault ([`inject_next`](Self::inject_next),
///    [`inject_next_for`](Self::inject_next_for)) that applies to the call is
///    taken from the queue.
/// 4. Else, if the call's target [fails permanently](Self::fail_permanently):
///    [`Fault::Reject`].
/// 5. Else the drawn number picks [`Fault::Throttle`], [`Fault::Unavailable`],
///    [`Fault::LostResponse`] or nothing, with the configured probabilities.
///
/// Every decision is therefore a function of the seed and the sequence of calls.
///
/// ```
/// use cogrion_core::provider::InfraLayer;
/// use cogrion_core::sim::{Fault, FaultPlan, FaultTarget};
///
/// // 20 % of calls throttled, 20 % unavailable, 20 % losing their answer.
/// let chaos = FaultPlan::transient(42, 0.2);
/// assert_eq!(chaos.seed(), 42);
///
/// // No random faults; one scripted fault and one lasting refusal.
/// let plan = FaultPlan::none();
/// plan.inject_next_for(InfraLayer::Cluster, Fault::LostResponse);
/// plan.fail_permanently(InfraLayer::NodePools);
/// plan.clear_permanent(InfraLayer::NodePools);
/// assert!(plan.injected().is_empty());
/// ```
#[derive(Clone)]
pub struct FaultPlan {
    inner: Arc<Mutex<PlanState>>,
}

struct PlanState {
    seed: u64,
    rng: StdRng,
    enabled: bool,
    throttle: f64,
    unavailable: f64,
    lost_response: f64,
    retry_after: Duration,
    permanent: BTreeSet<FaultTarget>,
    scripted: VecDeque<(Option<FaultTarget>, Fault)>,
    calls: u64,
    injected: Vec<InjectedFault>,
}

impl FaultPlan {
    /// A plan that injects no random faults (seed 0, every probability 0). Scripted
    /// and permanent faults can still be added. This is the default.
    pub fn none() -> Self {
        Self::seeded(0)
    }

    /// A plan with generator seed `seed` and no random faults yet: add them with
    /// the `with_*` methods.
    pub fn seeded(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(PlanState {
                seed,
                rng: StdRng::seed_from_u64(seed),
                enabled: true,
                throttle: 0.0,
                unavailable: 0.0,
                lost_response: 0.0,
                retry_after: DEFAULT_RETRY_AFTER,
                permanent: BTreeSet::new(),
                scripted: VecDeque::new(),
                calls: 0,
                injected: Vec::new(),
            })),
        }
    }

    /// A plan with seed `seed` where each of [`Fault::Throttle`],
    /// [`Fault::Unavailable`] and [`Fault::LostResponse`] hits a call with
    /// probability `probability` (so `3 × probability` of calls fail).
    pub fn transient(seed: u64, probability: f64) -> Self {
        Self::seeded(seed)
            .with_throttle(probability)
            .with_unavailable(probability)
            .with_lost_response(probability)
    }

    /// Sets the probability of [`Fault::Throttle`] per call. Probabilities are
    /// clamped to `0.0..=1.0` (NaN counts as 0); when they add up to more than 1,
    /// throttling wins first, then unavailability, then lost responses.
    pub fn with_throttle(self, probability: f64) -> Self {
        self.state().throttle = clamp(probability);
        self
    }

    /// Sets the probability of [`Fault::Unavailable`] per call (see
    /// [`with_throttle`](Self::with_throttle)).
    pub fn with_unavailable(self, probability: f64) -> Self {
        self.state().unavailable = clamp(probability);
        self
    }

    /// Sets the probability of [`Fault::LostResponse`] per call (see
    /// [`with_throttle`](Self::with_throttle)).
    pub fn with_lost_response(self, probability: f64) -> Self {
        self.state().lost_response = clamp(probability);
        self
    }

    /// Sets the `retry_after` of throttling errors (default
    /// [`DEFAULT_RETRY_AFTER`]).
    pub fn with_retry_after(self, retry_after: Duration) -> Self {
        self.state().retry_after = retry_after;
        self
    }

    /// The generator's seed.
    pub fn seed(&self) -> u64 {
        self.state().seed
    }

    /// Switches every fault on or off — random, scripted and permanent. While off,
    /// calls are neither counted nor draw from the generator.
    pub fn set_enabled(&self, enabled: bool) {
        self.state().enabled = enabled;
    }

    /// Makes every call on `target` fail with [`Error::Rejected`] until
    /// [`clear_permanent`](Self::clear_permanent).
    pub fn fail_permanently(&self, target: impl Into<FaultTarget>) {
        self.state().permanent.insert(target.into());
    }

    /// Ends a [`fail_permanently`](Self::fail_permanently). Returns whether the
    /// target was failing.
    pub fn clear_permanent(&self, target: impl Into<FaultTarget>) -> bool {
        self.state().permanent.remove(&target.into())
    }

    /// Queues `fault` for the next call, whatever it acts on.
    pub fn inject_next(&self, fault: Fault) {
        self.state().scripted.push_back((None, fault));
    }

    /// Queues `fault` for the next call on `target`. Scripted faults are taken
    /// in the order queued: the first one that applies to a call is used.
    pub fn inject_next_for(&self, target: impl Into<FaultTarget>, fault: Fault) {
        self.state()
            .scripted
            .push_back((Some(target.into()), fault));
    }

    /// How many scripted faults are still queued.
    pub fn scripted_pending(&self) -> usize {
        self.state().scripted.len()
    }

    /// How many calls the plan decided on.
    pub fn calls(&self) -> u64 {
        self.state().calls
    }

    /// Every fault injected so far, in call order.
    pub fn injected(&self) -> Vec<InjectedFault> {
        self.state().injected.clone()
    }

    /// Decides the fault of one call of `operation` on `target`, as described on
    /// the type.
    pub(super) fn decide(&self, operation: &'static str, target: &FaultTarget) -> Option<Fault> {
        let mut state = self.state();
        if !state.enabled {
            return None;
        }
        state.calls += 1;
        let draw: f64 = state.rng.random();
        let scripted = state
            .scripted
            .iter()
            .position(|(t, _)| t.as_ref().is_none_or(|t| t == target))
            .and_then(|i| state.scripted.remove(i))
            .map(|(_, fault)| fault);
        let fault = scripted.or_else(|| {
            if state.permanent.contains(target) {
                return Some(Fault::Reject);
            }
            let mut bound = state.throttle;
            if draw < bound {
                return Some(Fault::Throttle);
            }
            bound += state.unavailable;
            if draw < bound {
                return Some(Fault::Unavailable);
            }
            bound += state.lost_response;
            (draw < bound).then_some(Fault::LostResponse)
        })?;
        let call = state.calls;
        state.injected.push(InjectedFault {
            call,
            operation,
            target: target.clone(),
            fault,
        });
        Some(fault)
    }

    /// The error a call returns for `fault`.
    pub(super) fn error(&self, service: &str, fault: Fault, target: &FaultTarget) -> Error {
        let service = service.to_owned();
        match fault {
            Fault::Throttle => Error::Throttled {
                service,
                retry_after: Some(self.state().retry_after),
            },
            Fault::Unavailable => Error::Unavailable {
                service,
                detail: "simulated outage".into(),
                source: None,
            },
            Fault::LostResponse => lost_response(&service),
            Fault::Reject => Error::Rejected {
                service,
                detail: format!("simulated permanent failure of {target}"),
                source: None,
            },
        }
    }

    fn state(&self) -> MutexGuard<'_, PlanState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self::none()
    }
}

impl fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("FaultPlan")
            .field("seed", &state.seed)
            .field("enabled", &state.enabled)
            .field("throttle", &state.throttle)
            .field("unavailable", &state.unavailable)
            .field("lost_response", &state.lost_response)
            .field("retry_after", &state.retry_after)
            .field("permanent", &state.permanent)
            .field("scripted", &state.scripted)
            .field("calls", &state.calls)
            .field("injected", &state.injected.len())
            .finish()
    }
}

/// The error of a lost answer.
pub(super) fn lost_response(service: &str) -> Error {
    Error::Unavailable {
        service: service.to_owned(),
        detail: RESPONSE_LOST.into(),
        source: None,
    }
}

fn clamp(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

/// What a call does about its decided fault, shared by the cloud and the
/// executors: errors before anything is done, or a lost response to deliver after
/// the first change.
#[derive(Debug)]
pub(super) struct CallFaults {
    service: &'static str,
    lose_response: bool,
}

impl CallFaults {
    /// Decides the call's fault; returns the error of a fault that strikes before
    /// anything is done.
    pub(super) fn begin(
        plan: &FaultPlan,
        service: &'static str,
        operation: &'static str,
        target: &FaultTarget,
    ) -> Result<Self, Error> {
        match plan.decide(operation, target) {
            None => Ok(Self {
                service,
                lose_response: false,
            }),
            Some(Fault::LostResponse) => Ok(Self {
                service,
                lose_response: true,
            }),
            Some(fault) => Err(plan.error(service, fault, target)),
        }
    }

    /// To call right after a change was made: fails with the lost response if
    /// this call's answer is to be lost (once).
    pub(super) fn changed(&mut self) -> Result<(), Error> {
        if std::mem::take(&mut self.lose_response) {
            return Err(lost_response(self.service));
        }
        Ok(())
    }

    /// The call's answer: `result`, unless the answer is to be lost and no change
    /// lost it yet.
    pub(super) fn finish<T>(mut self, result: Result<T, Error>) -> Result<T, Error> {
        let result = result?;
        self.changed()?;
        Ok(result)
    }
}
