//! Deciding a batch's invocations together (see
//! [`crate::CommitBatch::apply_together`]): in which order they apply, and
//! which of them read what is still current when applied in that order.
//!
//! Done in memory from one read of the keys' versions, instead of a read
//! check (and a savepoint) per invocation. That is what lets one key's
//! read-modify-writes commit many per transaction: an executor runs the
//! next increment on the previous one's write before it is committed
//! (reading it under the version that commit will give it, see
//! [`picloud_core::Commit::version`]), and here the second one's read is
//! checked against the first one's write, in the same batch.

use std::collections::{BTreeSet, HashMap};

use picloud_core::{Effects, InvocationRecord, KvVersion};

use crate::outbox::OutboxRow;

/// One invocation to apply: its record, its effects, its outbox rows (its
/// emits) and the version its writes get (`None`: the sequence's next).
#[derive(Clone, Copy)]
pub struct Applying<'a> {
    pub record: &'a InvocationRecord,
    pub effects: &'a Effects,
    pub rows: &'a [OutboxRow],
    pub version: Option<KvVersion>,
}

impl<'a> Applying<'a> {
    pub fn new(record: &'a InvocationRecord, effects: &'a Effects, rows: &'a [OutboxRow]) -> Self {
        Self {
            record,
            effects,
            rows,
            version: None,
        }
    }

    pub fn with_version(self, version: Option<KvVersion>) -> Self {
        Self { version, ..self }
    }

    fn script(&self) -> &'a str {
        &self.record.script
    }
}

/// A key as the check sees it: (script, key).
pub(crate) type KeyOf<'a> = (&'a str, &'a str);

/// The state of a key written by a write whose version the sequence picks
/// at write time: equal to no version anyone read.
const UNKNOWN: KvVersion = -1;

/// The order `items` apply in: those that read nothing first, by id; then
/// the others by id, except that one reading a version another of them
/// writes comes after that one (an executor's pipelined runs of one
/// script, whose commits may arrive in any order).
pub fn order(items: &[Applying<'_>]) -> Vec<usize> {
    let by_id = |ix: &mut Vec<usize>| ix.sort_by_key(|&i| items[i].record.id);
    let (mut blind, mut reading): (Vec<usize>, Vec<usize>) =
        (0..items.len()).partition(|&i| !items[i].effects.can_conflict());
    by_id(&mut blind);
    by_id(&mut reading);
    // Who writes (script, key) at which version, among the reading ones.
    let mut writers: HashMap<(KeyOf<'_>, KvVersion), usize> = HashMap::new();
    for &i in &reading {
        let Some(v) = items[i].version else { continue };
        for k in items[i].effects.writes.keys() {
            writers.insert(((items[i].script(), k.as_str()), v), i);
        }
    }
    // Kahn's algorithm, the ready ones taken in id order (their place in
    // `reading`).
    let place: HashMap<usize, usize> = reading.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let mut waits_for = vec![0usize; items.len()];
    let mut unblocks: Vec<Vec<usize>> = vec![Vec::new(); items.len()];
    for &i in &reading {
        for (k, seen) in &items[i].effects.reads {
            if let Some(&w) = writers.get(&((items[i].script(), k.as_str()), *seen))
                && w != i
            {
                waits_for[i] += 1;
                unblocks[w].push(i);
            }
        }
    }
    let mut ready: BTreeSet<usize> = reading
        .iter()
        .filter(|&&i| waits_for[i] == 0)
        .map(|i| place[i])
        .collect();
    let mut out = blind;
    while let Some(p) = ready.pop_first() {
        let i = reading[p];
        out.push(i);
        for &n in &unblocks[i] {
            waits_for[n] -= 1;
            if waits_for[n] == 0 {
                ready.insert(place[&n]);
            }
        }
    }
    // A cycle (two runs each reading the other's write cannot happen, but
    // versions come from executors): the rest in id order; they conflict.
    if out.len() < items.len() {
        let placed: BTreeSet<usize> = out.iter().copied().collect();
        out.extend(reading.iter().filter(|i| !placed.contains(i)));
    }
    out
}

/// Whether each of `items` applies, taken in `order` from the keys'
/// versions `now` (every key any of them read; absent: 0): one applies
/// when every key it read is at the version it saw, and its writes then
/// set those keys' versions for the next. `false`: a conflict.
pub(crate) fn check<'a>(
    items: &[Applying<'a>],
    order: &[usize],
    mut now: HashMap<KeyOf<'a>, KvVersion>,
) -> Vec<bool> {
    let mut applies = vec![false; items.len()];
    for &i in order {
        let it = &items[i];
        let current =
            it.effects.reads.iter().all(|(k, seen)| {
                now.get(&(it.script(), k.as_str())).copied().unwrap_or(0) == *seen
            });
        if !current {
            continue;
        }
        applies[i] = true;
        for (k, value) in &it.effects.writes {
            let v = match value {
                None => 0,
                Some(_) => it.version.unwrap_or(UNKNOWN),
            };
            now.insert((it.script(), k.as_str()), v);
        }
    }
    applies
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn record(id: u128) -> InvocationRecord {
        let id = Uuid::from_u128(id);
        InvocationRecord {
            id,
            script: "s".into(),
            version: 1,
            trigger: picloud_core::Trigger::Event,
            status: picloud_core::InvocationStatus::Ok,
            http_status: None,
            started_at: chrono::Utc::now(),
            duration_us: 1,
            log: String::new(),
            error: None,
            executor: "e".into(),
            trace_id: id,
            attempt: 1,
            parent_id: None,
            response: None,
            public: false,
        }
    }

    fn effects(reads: &[(&str, KvVersion)], writes: &[&str]) -> Effects {
        let mut e = Effects::default();
        for (k, v) in reads {
            e.reads.insert((*k).into(), *v);
        }
        for k in writes {
            e.writes.insert((*k).into(), Some(json!(1)));
        }
        e
    }

    fn items<'a>(
        recs: &'a [InvocationRecord],
        effs: &'a [Effects],
        versions: &[Option<KvVersion>],
    ) -> Vec<Applying<'a>> {
        recs.iter()
            .zip(effs)
            .zip(versions)
            .map(|((r, e), v)| Applying::new(r, e, &[]).with_version(*v))
            .collect()
    }

    #[test]
    fn blind_ones_go_first_then_reads_by_id_after_the_writes_they_read() {
        let recs: Vec<_> = (1..=4).map(record).collect();
        // 1 reads k at 20 (written by 3), 2 is blind, 3 reads k at 5 and
        // writes it at 20, 4 reads k at 30 (written by 1).
        let effs = vec![
            effects(&[("k", 20)], &["k"]),
            effects(&[], &["j"]),
            effects(&[("k", 5)], &["k"]),
            effects(&[("k", 30)], &["k"]),
        ];
        let its = items(&recs, &effs, &[Some(30), None, Some(20), Some(40)]);
        assert_eq!(order(&its), vec![1, 2, 0, 3]);
    }

    #[test]
    fn a_chain_applies_whole_and_a_broken_link_fails_the_rest_of_it() {
        let recs: Vec<_> = (1..=3).map(record).collect();
        let effs = vec![
            effects(&[("k", 5)], &["k"]),
            effects(&[("k", 10)], &["k"]),
            effects(&[("k", 11)], &["k"]),
        ];
        let its = items(&recs, &effs, &[Some(10), Some(11), Some(12)]);
        let ord = order(&its);
        let now = |v| HashMap::from([(("s", "k"), v)]);
        assert_eq!(check(&its, &ord, now(5)), vec![true, true, true]);
        // Another writer got there first: the first conflicts, and so does
        // every run that read its write.
        assert_eq!(check(&its, &ord, now(6)), vec![false, false, false]);
    }

    #[test]
    fn a_write_without_its_own_version_changes_the_key_for_every_reader() {
        let recs: Vec<_> = (1..=2).map(record).collect();
        let effs = vec![effects(&[], &["k"]), effects(&[("k", 5)], &[])];
        let its = items(&recs, &effs, &[None, None]);
        let ord = order(&its);
        assert_eq!(ord, vec![0, 1]);
        let now = HashMap::from([(("s", "k"), 5)]);
        assert_eq!(check(&its, &ord, now), vec![true, false]);
    }

    #[test]
    fn a_deleted_key_reads_as_absent_and_a_missing_one_as_version_zero() {
        let recs: Vec<_> = (1..=2).map(record).collect();
        let mut delete = effects(&[("k", 5)], &[]);
        delete.writes.insert("k".into(), None);
        let effs = vec![delete, effects(&[("k", 0), ("new", 0)], &["k"])];
        let its = items(&recs, &effs, &[Some(9), Some(10)]);
        let ord = order(&its);
        let now = HashMap::from([(("s", "k"), 5)]);
        assert_eq!(check(&its, &ord, now), vec![true, true]);
    }
}
