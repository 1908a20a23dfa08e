//! The user and group each jailed VMM runs as.
//!
//! By default every jail gets an id of its own (uid = gid) from a range the
//! daemon owns, so one VMM taken over by its guest cannot signal, trace or
//! read the files of another: they are different users. A host may instead
//! run every jail as one shared user ([`JailIds::Shared`]).
//!
//! [`JailIdPool`] hands out the ids of a range. Invariant: an id is taken,
//! by one jail (named by its VM id), from the moment it is given to that
//! jail until the jail's directory (and with it every file the id owns
//! there) has been removed; no two existing jails of one pool share an id.
//! Jails found on disk at start (VMs a restarted daemon adopts) are
//! [`JailIdPool::mark`]ed with the owner of their chroot, which only root
//! can change. A release names the jail: releasing an id twice, or after it
//! went to another jail, changes nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The uid and gid one jailed VMM runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JailUser {
    pub uid: u32,
    pub gid: u32,
}

impl JailUser {
    /// `(uid_t)-1`, which no process or file can have (the kernel reads it
    /// as "unchanged"): the user of a jail whose user cannot be known, which
    /// is only ever removed.
    pub const NONE: Self = Self {
        uid: u32::MAX,
        gid: u32::MAX,
    };
}

/// Which users the jails of a daemon run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailIds {
    /// Every jail runs as this one user and group.
    Shared(JailUser),
    /// Each jail runs as its own id, uid = gid, from `start` to
    /// `start + count - 1` (validated by the caller: `start` > 0, `count`
    /// > 0, the last id below `u32::MAX`, which the kernel reads as "none").
    PerJail { start: u32, count: u32 },
}

impl JailIds {
    /// Whether `id` is in the per-jail range (never, for a shared user).
    fn owns(self, id: u32) -> bool {
        match self {
            Self::Shared(_) => false,
            Self::PerJail { start, count } => id >= start && id - start < count,
        }
    }
}

/// Every id of the range is taken.
#[derive(Debug, thiserror::Error)]
pub enum JailIdError {
    #[error("all {count} jail ids ({start} to {last}) are taken by VMs whose jails exist: delete or stop a VM, or give firecracker.jail_ids a larger range")]
    Exhausted { start: u32, last: u32, count: u32 },
}

fn exhausted(start: u32, count: u32) -> JailIdError {
    JailIdError::Exhausted {
        start,
        last: start.saturating_add(count.saturating_sub(1)),
        count,
    }
}

/// The ids of a daemon's jails: which are taken, which is given next.
#[derive(Debug)]
pub struct JailIdPool {
    ids: JailIds,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Each taken id and the jail that holds it.
    taken: BTreeMap<u32, String>,
    /// Where the search for a free id starts: just after the last id given,
    /// so an id just freed is the last to be given again.
    next: u32,
}

impl JailIdPool {
    pub fn new(ids: JailIds) -> Self {
        let next = match ids {
            JailIds::Shared(_) => 0,
            JailIds::PerJail { start, .. } => start,
        };
        Self {
            ids,
            state: Mutex::new(PoolState {
                taken: BTreeMap::new(),
                next,
            }),
        }
    }

    pub fn ids(&self) -> JailIds {
        self.ids
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // Every update leaves the state consistent: a panic elsewhere does
        // not make it unusable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The user for the new jail `jail`: the shared one, or a free id of
    /// the range, taken by `jail` until [`Self::release`]d.
    pub fn allocate(&self, jail: &str) -> Result<JailUser, JailIdError> {
        let (start, count) = match self.ids {
            JailIds::Shared(user) => return Ok(user),
            JailIds::PerJail { start, count } => (start, count),
        };
        let mut state = self.state();
        if state.taken.len() as u64 >= u64::from(count) {
            return Err(exhausted(start, count));
        }
        // At most `taken + 1` candidates are looked at before a free one.
        let mut candidate = state.next;
        for _ in 0..=state.taken.len() {
            if let std::collections::btree_map::Entry::Vacant(free) = state.taken.entry(candidate) {
                free.insert(jail.to_owned());
                state.next = self.after(candidate);
                return Ok(JailUser {
                    uid: candidate,
                    gid: candidate,
                });
            }
            candidate = self.after(candidate);
        }
        Err(exhausted(start, count))
    }

    /// The id after `id` in the range, wrapping to its start.
    fn after(&self, id: u32) -> u32 {
        match self.ids {
            JailIds::Shared(_) => id,
            JailIds::PerJail { start, count } => {
                if id - start + 1 >= count {
                    start
                } else {
                    id + 1
                }
            }
        }
    }

    /// Records that the existing jail `jail` (found on disk) runs as
    /// `user`. An id outside the range (a shared user, or a range the
    /// configuration no longer has) is not the pool's and is left alone:
    /// the pool never gives it.
    pub fn mark(&self, user: JailUser, jail: &str) {
        if self.ids.owns(user.uid) {
            self.state().taken.insert(user.uid, jail.to_owned());
        }
    }

    /// Gives `user`'s id back once `jail`, which held it, has been removed;
    /// nothing when another jail holds it now.
    pub fn release(&self, user: JailUser, jail: &str) {
        let mut state = self.state();
        if state
            .taken
            .get(&user.uid)
            .is_some_and(|holder| holder == jail)
        {
            state.taken.remove(&user.uid);
        }
    }

    /// How many ids are taken.
    pub fn taken(&self) -> usize {
        self.state().taken.len()
    }

    /// Fails as [`Self::allocate`] would now (every id taken), for a
    /// caller that wants to refuse a request before it starts anything.
    pub fn check_free(&self) -> Result<(), JailIdError> {
        match self.ids {
            JailIds::PerJail { start, count } if self.taken() as u64 >= u64::from(count) => {
                Err(exhausted(start, count))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_jail(start: u32, count: u32) -> JailIdPool {
        JailIdPool::new(JailIds::PerJail { start, count })
    }

    #[test]
    fn each_jail_gets_its_own_id_until_the_range_is_exhausted() {
        let pool = per_jail(1000, 3);
        let ids: Vec<_> = (0..3)
            .map(|i| pool.allocate(&format!("vm-{i}")).unwrap())
            .collect();
        assert_eq!(
            ids.iter().map(|u| (u.uid, u.gid)).collect::<Vec<_>>(),
            [(1000, 1000), (1001, 1001), (1002, 1002)]
        );
        let err = pool.allocate("vm-3").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("all 3 jail ids (1000 to 1002)")
                && message.contains("firecracker.jail_ids"),
            "{message}"
        );
        assert!(pool.check_free().is_err());
        assert_eq!(pool.taken(), 3);
    }

    #[test]
    fn a_released_id_is_given_again_but_only_after_the_others() {
        let pool = per_jail(10, 3);
        let a = pool.allocate("a").unwrap();
        let b = pool.allocate("b").unwrap();
        pool.release(a, "a");
        // The free id after the last one given comes first.
        assert_eq!(pool.allocate("c").unwrap().uid, 12);
        // Then the search wraps to the range's start and finds a's id.
        assert_eq!(pool.allocate("d").unwrap().uid, 10);
        assert!(pool.allocate("e").is_err());
        // A second release of a's jail (d holds its id now) changes nothing.
        pool.release(a, "a");
        assert!(pool.allocate("e").is_err());
        pool.release(b, "b");
        assert_eq!(pool.allocate("e").unwrap().uid, 11);
    }

    #[test]
    fn ids_of_adopted_jails_are_never_given_to_new_ones() {
        let pool = per_jail(500, 4);
        // A restarted daemon finds two jails, one of a range it no longer has.
        pool.mark(JailUser { uid: 500, gid: 500 }, "old-1");
        pool.mark(JailUser { uid: 502, gid: 502 }, "old-2");
        pool.mark(
            JailUser {
                uid: 65534,
                gid: 65534,
            },
            "shared",
        );
        assert_eq!(pool.taken(), 2);
        let given: Vec<u32> = std::iter::from_fn(|| pool.allocate("new").ok())
            .map(|u| u.uid)
            .collect();
        assert_eq!(given, [501, 503]);
        // An adopted VM's jail removed: its id is free again.
        pool.release(JailUser { uid: 502, gid: 502 }, "old-2");
        assert_eq!(pool.allocate("newer").unwrap().uid, 502);
    }

    #[test]
    fn a_range_at_the_top_of_the_id_space_does_not_wrap() {
        let pool = per_jail(u32::MAX - 2, 2);
        assert_eq!(pool.allocate("a").unwrap().uid, u32::MAX - 2);
        assert_eq!(pool.allocate("b").unwrap().uid, u32::MAX - 1);
        assert!(pool.allocate("c").is_err());
        pool.release(
            JailUser {
                uid: u32::MAX - 2,
                gid: u32::MAX - 2,
            },
            "a",
        );
        assert_eq!(pool.allocate("c").unwrap().uid, u32::MAX - 2);
        assert!(!JailIds::PerJail {
            start: u32::MAX - 2,
            count: 2
        }
        .owns(u32::MAX));
    }

    #[test]
    fn a_shared_user_is_given_to_every_jail_and_never_runs_out() {
        let user = JailUser { uid: 7, gid: 8 };
        let pool = JailIdPool::new(JailIds::Shared(user));
        for i in 0..100 {
            assert_eq!(pool.allocate(&format!("vm-{i}")).unwrap(), user);
        }
        pool.mark(user, "vm-0");
        pool.release(user, "vm-0");
        assert_eq!(pool.taken(), 0);
        assert!(pool.check_free().is_ok());
    }
}
