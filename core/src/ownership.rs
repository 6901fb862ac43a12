//! Who may send signals for each agent id.
//!
//! An agent id is a sub-account with its own margin budget, so exactly one producer may speak
//! for it: two producers with one id would trade one budget twice and make its PnL meaningless.
//! [`AgentOwners`] is fixed at start from configuration — the engine's own strategies, the
//! in-process agents, the QUIC agents (each with its own token) and the ids left to Redis — and
//! every ingress checks it before a signal enters the ring. Redis has no connections to tell
//! producers apart, so each Redis message names its producer and [`Leases`] lets one producer
//! hold an id at a time: the holder keeps it while it keeps sending, and another producer
//! takes it over only after the holder has been silent for the lease (a replaced pod).

use crate::aggregate::{FIRST_EXTERNAL_AGENT, MAX_AGENTS};
use crate::event::AgentId;

/// Who owns an agent id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The engine's own strategies (ids below [`FIRST_EXTERNAL_AGENT`]).
    Engine,
    /// An agent of the in-process runtime.
    InProcess,
    /// A remote agent over QUIC, authenticated by its own token.
    Quic,
    /// Remote agents over Redis, one producer at a time ([`Leases`]).
    Redis,
    /// Nobody: signals for this id are refused.
    Nobody,
}

impl Owner {
    /// The name used in logs, metrics and the startup line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Owner::Engine => "engine",
            Owner::InProcess => "in_process",
            Owner::Quic => "quic",
            Owner::Redis => "redis",
            Owner::Nobody => "nobody",
        }
    }
}

/// Where a signal came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// The in-process agents runtime.
    InProcess,
    /// The QUIC ingress.
    Quic,
    /// The Redis ingress.
    Redis,
}

impl Ingress {
    const fn owner(self) -> Owner {
        match self {
            Ingress::InProcess => Owner::InProcess,
            Ingress::Quic => Owner::Quic,
            Ingress::Redis => Owner::Redis,
        }
    }
}

/// Why a signal was refused for its agent id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnershipRefusal {
    /// The id is not an agent id at all (≥ [`MAX_AGENTS`]).
    UnknownAgent,
    /// Another ingress owns the id.
    OwnedElsewhere(Owner),
    /// Another Redis producer holds the id's lease.
    HeldByAnotherProducer,
}

impl OwnershipRefusal {
    /// The reason label of the refusal counter.
    pub const fn as_str(self) -> &'static str {
        match self {
            OwnershipRefusal::UnknownAgent => "unknown_agent",
            OwnershipRefusal::OwnedElsewhere(Owner::Engine) => "owned_by_engine",
            OwnershipRefusal::OwnedElsewhere(Owner::InProcess) => "owned_in_process",
            OwnershipRefusal::OwnedElsewhere(Owner::Quic) => "owned_by_quic",
            OwnershipRefusal::OwnedElsewhere(Owner::Redis) => "owned_by_redis",
            OwnershipRefusal::OwnedElsewhere(Owner::Nobody) => "not_assigned",
            OwnershipRefusal::HeldByAnotherProducer => "held_by_another_producer",
        }
    }
}

impl std::fmt::Display for OwnershipRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OwnershipRefusal::UnknownAgent => write!(f, "not an agent id (0..{MAX_AGENTS})"),
            OwnershipRefusal::OwnedElsewhere(Owner::Nobody) => f.write_str("no ingress is assigned this agent id"),
            OwnershipRefusal::OwnedElsewhere(o) => write!(f, "the agent id belongs to the {} ingress", o.as_str()),
            OwnershipRefusal::HeldByAnotherProducer => {
                f.write_str("another producer holds this agent id (it takes over only after the holder's lease lapses)")
            }
        }
    }
}

/// The owner of every agent id, fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOwners {
    owners: [Owner; MAX_AGENTS],
}

impl Default for AgentOwners {
    /// The engine owns its strategies' ids; every external id is left to Redis.
    fn default() -> Self {
        let mut owners = [Owner::Redis; MAX_AGENTS];
        for o in &mut owners[..usize::from(FIRST_EXTERNAL_AGENT)] {
            *o = Owner::Engine;
        }
        Self { owners }
    }
}

impl AgentOwners {
    /// Gives an external id to `owner`. Refuses the engine's ids, ids out of range and an id
    /// that the in-process runtime or QUIC already holds (a configuration mistake to report).
    pub fn assign(&mut self, agent: u16, owner: Owner) -> Result<(), String> {
        let slot = self.owners.get_mut(usize::from(agent)).ok_or_else(|| format!("agent id {agent} is outside 0..{MAX_AGENTS}"))?;
        match *slot {
            Owner::Engine => {
                Err(format!("agent id {agent} belongs to the engine's own strategies (external ids start at {FIRST_EXTERNAL_AGENT})"))
            }
            Owner::InProcess | Owner::Quic if *slot != owner => Err(format!(
                "agent id {agent} is given to both {} and {}: an agent id has exactly one producer",
                slot.as_str(),
                owner.as_str()
            )),
            _ => {
                *slot = owner;
                Ok(())
            }
        }
    }

    /// Leaves Redis only `ids`: every other external id Redis held is nobody's. Ids the
    /// in-process runtime or QUIC own stay theirs; naming one of them is a mistake.
    pub fn restrict_redis(&mut self, ids: &[u16]) -> Result<(), String> {
        for &id in ids {
            match self.owners.get(usize::from(id)) {
                None => return Err(format!("agent id {id} is outside 0..{MAX_AGENTS}")),
                Some(Owner::Redis) => {}
                Some(o) => return Err(format!("agent id {id} cannot be a Redis agent: it belongs to {}", o.as_str())),
            }
        }
        for (id, o) in self.owners.iter_mut().enumerate() {
            if *o == Owner::Redis && !ids.contains(&(id as u16)) {
                *o = Owner::Nobody;
            }
        }
        Ok(())
    }

    /// The owner of an id (`Nobody` out of range).
    pub fn owner(&self, agent: AgentId) -> Owner {
        self.owners.get(agent.index()).copied().unwrap_or(Owner::Nobody)
    }

    /// Whether a signal for `agent` may come in through `ingress`.
    pub fn check(&self, agent: AgentId, ingress: Ingress) -> Result<(), OwnershipRefusal> {
        let Some(&owner) = self.owners.get(agent.index()) else { return Err(OwnershipRefusal::UnknownAgent) };
        if owner == ingress.owner() {
            Ok(())
        } else {
            Err(OwnershipRefusal::OwnedElsewhere(owner))
        }
    }

    /// One line for the startup summary: `engine 0-1, in_process 2-9, redis 10-15`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for owner in [Owner::Engine, Owner::InProcess, Owner::Quic, Owner::Redis] {
            let ids: Vec<usize> = (0..MAX_AGENTS).filter(|&i| self.owners[i] == owner).collect();
            if !ids.is_empty() {
                parts.push(format!("{} {}", owner.as_str(), ranges(&ids)));
            }
        }
        parts.join(", ")
    }
}

/// `[2,3,4,7]` → `2-4,7`.
fn ranges(ids: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        while i + 1 < ids.len() && ids[i + 1] == ids[i] + 1 {
            i += 1;
        }
        out.push(if ids[i] == start { start.to_string() } else { format!("{start}-{}", ids[i]) });
        i += 1;
    }
    out.join(",")
}

/// One producer per agent id among the producers of one ingress: the first to send holds the
/// id, keeps it by sending, and loses it only after `lease_ns` of silence.
#[derive(Debug, Clone)]
pub struct Leases<P> {
    lease_ns: u64,
    holders: [Option<(P, u64)>; MAX_AGENTS],
}

impl<P: PartialEq + Clone> Leases<P> {
    /// Leases that lapse after `lease_ns` of silence.
    pub fn new(lease_ns: u64) -> Self {
        Self { lease_ns, holders: std::array::from_fn(|_| None) }
    }

    /// Takes or renews `agent` for `producer` at `now_ns`; refused while another producer's
    /// lease runs. Returns the previous holder when the id changed hands.
    pub fn claim(&mut self, agent: AgentId, producer: &P, now_ns: u64) -> Result<Option<P>, OwnershipRefusal> {
        let slot = self.holders.get_mut(agent.index()).ok_or(OwnershipRefusal::UnknownAgent)?;
        match slot {
            Some((holder, last)) if holder == producer => {
                *last = (*last).max(now_ns);
                Ok(None)
            }
            Some((_, last)) if now_ns.saturating_sub(*last) < self.lease_ns => Err(OwnershipRefusal::HeldByAnotherProducer),
            _ => {
                let previous = slot.replace((producer.clone(), now_ns)).map(|(p, _)| p);
                Ok(previous)
            }
        }
    }

    /// The producer holding `agent`, if any (lapsed leases included until taken over).
    pub fn holder(&self, agent: AgentId) -> Option<&P> {
        self.holders.get(agent.index()).and_then(|h| h.as_ref()).map(|(p, _)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_every_external_id_to_redis() {
        let o = AgentOwners::default();
        assert_eq!(o.check(AgentId(0), Ingress::Redis), Err(OwnershipRefusal::OwnedElsewhere(Owner::Engine)));
        assert_eq!(o.check(AgentId(2), Ingress::Redis), Ok(()));
        assert_eq!(o.check(AgentId(2), Ingress::Quic), Err(OwnershipRefusal::OwnedElsewhere(Owner::Redis)));
        assert_eq!(o.check(AgentId(16), Ingress::Redis), Err(OwnershipRefusal::UnknownAgent));
        assert_eq!(o.describe(), "engine 0-1, redis 2-15");
    }

    #[test]
    fn each_id_has_one_owner_and_a_clash_is_a_configuration_error() {
        let mut o = AgentOwners::default();
        for id in 2..=9 {
            o.assign(id, Owner::InProcess).unwrap();
        }
        o.assign(10, Owner::Quic).unwrap();
        assert!(o.assign(10, Owner::InProcess).unwrap_err().contains("exactly one producer"));
        assert!(o.assign(3, Owner::Quic).unwrap_err().contains("in_process"));
        assert!(o.assign(1, Owner::Quic).unwrap_err().contains("engine"));
        assert!(o.assign(16, Owner::Quic).is_err());
        assert_eq!(o.check(AgentId(3), Ingress::Redis), Err(OwnershipRefusal::OwnedElsewhere(Owner::InProcess)));
        assert_eq!(o.check(AgentId(3), Ingress::InProcess), Ok(()));
        assert_eq!(o.check(AgentId(10), Ingress::Redis), Err(OwnershipRefusal::OwnedElsewhere(Owner::Quic)));
        assert_eq!(o.check(AgentId(11), Ingress::Redis), Ok(()));
        assert_eq!(o.describe(), "engine 0-1, in_process 2-9, quic 10, redis 11-15");
        o.restrict_redis(&[12, 13]).unwrap();
        assert_eq!(o.check(AgentId(11), Ingress::Redis), Err(OwnershipRefusal::OwnedElsewhere(Owner::Nobody)));
        assert_eq!(o.check(AgentId(13), Ingress::Redis), Ok(()));
        assert_eq!(o.describe(), "engine 0-1, in_process 2-9, quic 10, redis 12-13");
        assert!(o.restrict_redis(&[10]).unwrap_err().contains("quic"));
    }

    #[test]
    fn a_lease_holds_while_its_producer_speaks_and_passes_on_after_silence() {
        let mut l: Leases<String> = Leases::new(10_000);
        let (a, b) = ("pod-a".to_string(), "pod-b".to_string());
        assert_eq!(l.claim(AgentId(5), &a, 1_000), Ok(None));
        assert_eq!(l.claim(AgentId(5), &b, 5_000), Err(OwnershipRefusal::HeldByAnotherProducer));
        // Speaking renews: b is still refused 10 µs after a's first signal.
        assert_eq!(l.claim(AgentId(5), &a, 9_000), Ok(None));
        assert_eq!(l.claim(AgentId(5), &b, 12_000), Err(OwnershipRefusal::HeldByAnotherProducer));
        // Another id is free for b meanwhile.
        assert_eq!(l.claim(AgentId(6), &b, 12_000), Ok(None));
        // a is silent for a whole lease: b takes over, and now a is the one refused.
        assert_eq!(l.claim(AgentId(5), &b, 19_000), Ok(Some(a.clone())));
        assert_eq!(l.holder(AgentId(5)), Some(&b));
        assert_eq!(l.claim(AgentId(5), &a, 19_500), Err(OwnershipRefusal::HeldByAnotherProducer));
        // A clock that steps back never extends or breaks a lease.
        assert_eq!(l.claim(AgentId(5), &b, 100), Ok(None));
        assert_eq!(l.claim(AgentId(5), &a, 28_999), Err(OwnershipRefusal::HeldByAnotherProducer));
        assert_eq!(l.claim(AgentId(16), &a, 0), Err(OwnershipRefusal::UnknownAgent));
    }
}
