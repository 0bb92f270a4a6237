//! The chain format: one JSON entry per line, each committing to the one before it.
//!
//! `hash` is the lowercase hex SHA-256 of the entry serialized without its `hash` member: compact JSON
//! (no whitespace), members in the order `seq, time, op, table, files, removed, prev_hash`, each file as
//! `path, sha256, size, rows`. Because `prev_hash` is inside what is hashed, editing, removing or
//! reordering any entry breaks every link after it; only an edit that also rewrites every later entry goes
//! unnoticed, which is what the signed head (see `sign`) is for.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::Manifest;

/// `prev_hash` of the first entry.
pub const GENESIS_PREV_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// What a chain entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A flush sealed new Parquet files (`files`).
    Seal,
    /// A WAL segment was closed; `rows` counts its records.
    SealWal,
    /// Covered WAL segments are about to be deleted (`removed`).
    RetireWal,
    /// Compaction replaced `removed` with `files`.
    Compact,
    /// Retention dropped `removed`.
    Retain,
    /// A state table was rewritten in place: `files` is its new content.
    State,
    /// `open` found sealed files that never became live (a crash before the manifest swap) and deleted them.
    Abandon,
    /// `open` took files into the chain: the manifest of a store older than the chain (first entry only),
    /// or files a crash left live although the chain had already retired them.
    Adopt,
}

/// A file as sealed: its content hash and size; `rows` are Parquet rows, or WAL records for a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// Parquet: relative to the object store root (`events/date=…/hour=…/<uuid>.parquet`);
    /// WAL segments: relative to `data_dir` (`wal/<first seq>.wal`).
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub rows: u64,
}

impl FileRecord {
    pub(crate) fn of(f: &crate::StoredFile, sha256: String) -> FileRecord {
        FileRecord {
            path: f.path.clone(),
            sha256,
            size: f.size,
            rows: f.rows,
        }
    }
}

/// One line of `_audit/chain.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    /// RFC 3339 UTC with microseconds.
    pub time: String,
    pub op: Op,
    /// Table name; `null` for WAL entries and for entries spanning tables.
    pub table: Option<String>,
    pub files: Vec<FileRecord>,
    pub removed: Vec<String>,
    /// For `seal`: the WAL sequence number the sealed files cover. Until the manifest covers it too, the
    /// files may be a crash's leftovers, whose rows the WAL still holds; after, a sealed file missing from
    /// the manifest was taken out of it. Absent in entries written before it existed (and from the hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_seq: Option<u64>,
    pub prev_hash: String,
    pub hash: String,
}

/// The hashed part of an entry (everything but `hash`), in its canonical member order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time: &'a str,
    op: Op,
    table: Option<&'a str>,
    files: &'a [FileRecord],
    removed: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_seq: Option<u64>,
    prev_hash: &'a str,
}

impl Entry {
    /// The hash this entry must carry, computed from its other members.
    pub fn compute_hash(&self) -> String {
        let body = Hashed {
            seq: self.seq,
            time: &self.time,
            op: self.op,
            table: self.table.as_deref(),
            files: &self.files,
            removed: &self.removed,
            wal_seq: self.wal_seq,
            prev_hash: &self.prev_hash,
        };
        // Serializing plain strings and integers cannot fail.
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}

/// An entry that does not link: edited, out of order, or following a removed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The entry's own `seq` when it parses, else the one expected at that position.
    pub seq: u64,
    pub reason: String,
}

/// A chain read from its bytes, every link checked.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// Every entry that parses, in file order (including those after a break).
    pub entries: Vec<Entry>,
    pub breaks: Vec<Break>,
    /// Length of the complete lines; anything after it is a line torn by a crash during an append.
    pub complete_len: usize,
}

impl Parsed {
    pub fn torn_tail(&self, total_len: usize) -> bool {
        self.complete_len < total_len
    }
}

pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    let complete_len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut out = Parsed {
        complete_len,
        ..Default::default()
    };
    let mut prev: Option<(u64, String)> = None;
    for (i, line) in bytes[..complete_len].split(|b| *b == b'\n').enumerate() {
        let expected_seq = prev.as_ref().map_or(1, |p| p.0 + 1);
        if line.is_empty() {
            // The split yields one empty piece after the final newline.
            continue;
        }
        let entry: Entry = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(e) => {
                out.breaks.push(Break {
                    seq: expected_seq,
                    reason: format!("line {} does not parse: {e}", i + 1),
                });
                continue;
            }
        };
        if entry.compute_hash() != entry.hash {
            out.breaks.push(Break {
                seq: entry.seq,
                reason: "its contents do not match its hash (edited)".into(),
            });
        }
        if entry.seq != expected_seq {
            out.breaks.push(Break {
                seq: entry.seq,
                reason: format!(
                    "found where entry {expected_seq} belongs (entries removed or reordered)"
                ),
            });
        }
        let expected_prev = prev.as_ref().map_or(GENESIS_PREV_HASH, |p| p.1.as_str());
        if entry.prev_hash != expected_prev {
            out.breaks.push(Break {
                seq: entry.seq,
                reason: format!(
                    "prev_hash does not match the hash of the line before it (seq {}): an entry was removed, \
                     edited or reordered",
                    prev.as_ref().map_or(0, |p| p.0)
                ),
            });
        }
        prev = Some((entry.seq, entry.hash.clone()));
        out.entries.push(entry);
    }
    out
}

/// Files the chain took in as it found them when it began, rather than sealed as they were written: the
/// store was older than its chain, or its chain was removed or emptied. The chain vouches for them only
/// from then on, so `verify` says so. They are the `adopt` entries before the first seal, compaction or
/// retention; a later `adopt` (a crash's leftover) can only follow one of those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartAdoption {
    pub files: usize,
    /// When the chain began (the first adopting entry's time).
    pub time: String,
}

pub(crate) fn adopted_at_start(entries: &[Entry]) -> Option<StartAdoption> {
    let mut found: Option<StartAdoption> = None;
    for e in entries {
        match e.op {
            Op::Seal | Op::Compact | Op::Retain => break,
            Op::Adopt => {
                found
                    .get_or_insert_with(|| StartAdoption {
                        files: 0,
                        time: e.time.clone(),
                    })
                    .files += e.files.len();
            }
            _ => {}
        }
    }
    found.filter(|a| a.files > 0)
}

/// What one sealed file is expected to be, and the entry that said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expected {
    pub sha256: String,
    pub size: u64,
    pub rows: u64,
    pub seq: u64,
    /// How it was sealed, to tell a crash's leftover from a file taken out of the manifest.
    pub origin: Origin,
}

/// The operation that sealed a file, as far as telling leftovers apart needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A flush that covered the WAL up to this sequence number (`None`: an entry older than the field).
    Flush {
        wal_seq: Option<u64>,
    },
    /// Compaction, replacing these files.
    Compaction {
        inputs: Vec<String>,
    },
    /// A state table's snapshot, rewritten in place. Only its first write (`first`) can be cut short before
    /// the manifest lists it: later ones rewrite a path the manifest already lists.
    State {
        first: bool,
    },
    /// Taken back after compaction retired it (its manifest save failed): these files replaced it.
    Replaced {
        outputs: Vec<String>,
    },
    /// Taken back after retention retired it (its manifest save failed).
    Expired,
    Other,
}

impl Expected {
    /// True if this file, absent from `manifest`, may be what a crash left between sealing it and making it
    /// live: a flush's whose rows the WAL still holds, or a compaction's whose inputs are all still listed.
    /// Anything else sealed and unlisted was taken out of the manifest.
    ///
    /// `wal_records` is the lowest and highest record sequence on disk. A flush's rows are still in the WAL
    /// only if every record after the manifest's `wal_seq` up to the flush's is there: a WAL that starts
    /// later was retired past them, which happens only after a manifest listed the flush, so a manifest
    /// that no longer does was rolled back or edited, and deleting the file would lose its rows.
    pub fn may_be_unfinished(&self, manifest: &Manifest, wal_records: Option<(u64, u64)>) -> bool {
        match &self.origin {
            Origin::Flush { wal_seq: None } => true,
            Origin::Flush {
                wal_seq: Some(covered),
            } => {
                *covered > manifest.wal_seq
                    && wal_records.is_some_and(|(lowest, highest)| {
                        lowest <= manifest.wal_seq + 1 && highest >= *covered
                    })
            }
            Origin::Compaction { inputs } => inputs.iter().all(|p| manifest.contains(p)),
            Origin::State { first } => *first,
            // The failed save may have landed after all (a rename whose directory fsync failed, an S3 PUT
            // whose answer was lost): then the manifest lists the outputs, and the rows live on there...
            Origin::Replaced { outputs } => {
                !outputs.is_empty() && outputs.iter().all(|p| manifest.contains(p))
            }
            // ...or, for retention, the file had been let go already.
            Origin::Expired => true,
            Origin::Other => false,
        }
    }
}

/// The files the chain says exist, from replaying its entries in order.
#[derive(Debug, Default, Clone)]
pub(crate) struct ChainState {
    /// Sealed and not removed since: these must exist with these hashes.
    pub live: BTreeMap<String, Expected>,
    /// Removed by compaction, retention, WAL retirement or abandonment; they may linger until their delayed
    /// delete, but only unchanged.
    pub retired: BTreeMap<String, Expected>,
    /// For files rewritten in place (state tables): the content before the latest rewrite, which a crash
    /// between recording the rewrite and making it can leave on disk.
    pub previous: BTreeMap<String, Expected>,
    /// Retired compaction inputs: the files that replaced them.
    pub replaced_by: BTreeMap<String, Vec<String>>,
    /// Retired by retention.
    pub expired: BTreeSet<String>,
    /// The WAL positions flushes sealed files up to: the only values a manifest's `wal_seq` takes.
    pub flush_marks: BTreeSet<u64>,
}

impl ChainState {
    pub fn apply(&mut self, e: &Entry) {
        if let (Op::Seal, Some(mark)) = (e.op, e.wal_seq) {
            self.flush_marks.insert(mark);
        }
        for path in &e.removed {
            if let Some(x) = self.live.remove(path) {
                self.retired.insert(path.clone(), x);
                if e.op == Op::Compact {
                    let outputs = e.files.iter().map(|f| f.path.clone()).collect();
                    self.replaced_by.insert(path.clone(), outputs);
                }
                if e.op == Op::Retain {
                    self.expired.insert(path.clone());
                }
            }
        }
        for f in &e.files {
            let origin = match e.op {
                Op::Seal => Origin::Flush { wal_seq: e.wal_seq },
                Op::Compact => Origin::Compaction {
                    inputs: e.removed.clone(),
                },
                // Not live: never written, or its first write abandoned (by the store after a failed
                // write, or by `open` after a crash).
                Op::State => Origin::State {
                    first: !self.live.contains_key(&f.path),
                },
                // Taken back: why it had been retired still tells a leftover from a removal.
                Op::Adopt => match self.replaced_by.get(&f.path) {
                    Some(outputs) => Origin::Replaced {
                        outputs: outputs.clone(),
                    },
                    None if self.expired.contains(&f.path) => Origin::Expired,
                    None => Origin::Other,
                },
                _ => Origin::Other,
            };
            let x = Expected {
                sha256: f.sha256.clone(),
                size: f.size,
                rows: f.rows,
                seq: e.seq,
                origin,
            };
            let retired = self.retired.remove(&f.path);
            self.replaced_by.remove(&f.path);
            self.expired.remove(&f.path);
            // A state file's content before this rewrite: the live one, or the one its abandoned write
            // left (that write's manifest save may have landed after all, and `open` restores it).
            if let Some(old) = self.live.insert(f.path.clone(), x).or(retired) {
                if e.op == Op::State {
                    self.previous.insert(f.path.clone(), old);
                }
            }
        }
    }

    /// The WAL records on disk (lowest, highest) as evidence for [`Expected::may_be_unfinished`]: none if
    /// the manifest's `wal_seq` is no position a flush recorded. Only a flush sets it, to the position
    /// its seal names, so another value was written by hand, chosen to make a file look like a flush
    /// that never finished (a `wal_seq` just below the WAL's first record would let `open` delete a
    /// flushed file whose earliest rows exist nowhere else). Before the chain's first seal with a position
    /// (a store older than the chain), any lower value is taken as it is.
    pub fn wal_evidence(
        &self,
        manifest: &Manifest,
        wal_records: Option<(u64, u64)>,
    ) -> Option<(u64, u64)> {
        let w = manifest.wal_seq;
        let known = w == 0
            || self.flush_marks.contains(&w)
            || self.flush_marks.first().is_none_or(|first| w < *first);
        wal_records.filter(|_| known)
    }

    /// The retired compaction input `path`'s replacement, if `manifest` lists both: no crash does that (a
    /// crash before the manifest swap leaves the inputs listed and not the output), so the input was put
    /// back by hand and its rows are counted twice.
    pub fn relisted_with(&self, path: &str, manifest: &Manifest) -> Option<String> {
        self.replaced_by
            .get(path)?
            .iter()
            .find(|out| manifest.contains(out))
            .cloned()
    }

    pub fn replay<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> ChainState {
        let mut s = ChainState::default();
        for e in entries {
            s.apply(e);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, prev: &str, op: Op, files: &[(&str, &str)], removed: &[&str]) -> Entry {
        let mut e = Entry {
            seq,
            time: "2026-11-22T14:00:00.000000Z".into(),
            op,
            table: Some("events".into()),
            files: files
                .iter()
                .map(|(p, h)| FileRecord {
                    path: p.to_string(),
                    sha256: h.to_string(),
                    size: 1,
                    rows: 1,
                })
                .collect(),
            removed: removed.iter().map(|s| s.to_string()).collect(),
            wal_seq: None,
            prev_hash: prev.into(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }

    #[test]
    fn only_adoptions_before_the_first_seal_count_as_the_chains_start() {
        let g = GENESIS_PREV_HASH;
        let begun_with_its_store = [
            entry(1, g, Op::Seal, &[("a", "1")], &[]),
            entry(2, g, Op::Compact, &[("b", "2")], &["a"]),
            // A crash left `a` live although the compaction had retired it.
            entry(3, g, Op::Adopt, &[("a", "1")], &[]),
        ];
        assert_eq!(adopted_at_start(&begun_with_its_store), None);
        let begun_later = [
            entry(1, g, Op::Adopt, &[("a", "1"), ("b", "2")], &[]),
            entry(2, g, Op::SealWal, &[("wal/1.wal", "3")], &[]),
            entry(3, g, Op::Adopt, &[("c", "4")], &[]),
            entry(4, g, Op::Seal, &[("d", "5")], &[]),
            entry(5, g, Op::Adopt, &[("e", "6")], &[]),
        ];
        let found = adopted_at_start(&begun_later).expect("adopted at the start");
        assert_eq!(found.files, 3);
        assert_eq!(found.time, begun_later[0].time);
    }

    fn listing(paths: &[&str]) -> Manifest {
        let mut m = Manifest::default();
        for p in paths {
            m.files_mut(crate::Table::Events).push(crate::StoredFile {
                path: p.to_string(),
                size: 1,
                rows: 1,
                min_time_us: 0,
                max_time_us: 0,
            });
        }
        m
    }

    /// A compaction input taken back after the compaction's save failed: if the manifest lists the output
    /// (the save landed after all), the input is a leftover; if not, a manifest without the input was edited.
    #[test]
    fn a_taken_back_input_is_a_leftover_only_beside_its_output() {
        let g = GENESIS_PREV_HASH;
        let state = ChainState::replay(&[
            entry(1, g, Op::Seal, &[("a", "1"), ("b", "2")], &[]),
            entry(2, g, Op::Compact, &[("c", "3")], &["a", "b"]),
            entry(3, g, Op::Abandon, &[], &["c"]),
            entry(4, g, Op::Adopt, &[("a", "1"), ("b", "2")], &[]),
        ]);
        let a = &state.live["a"];
        assert_eq!(
            a.origin,
            Origin::Replaced {
                outputs: vec!["c".into()]
            }
        );
        assert!(a.may_be_unfinished(&listing(&["c"]), None));
        assert!(!a.may_be_unfinished(&listing(&["b"]), None));
        // A state file: only its first write.
        let state = ChainState::replay(&[
            entry(1, g, Op::State, &[("s", "1")], &[]),
            entry(2, g, Op::State, &[("s", "2")], &[]),
            entry(3, g, Op::State, &[("t", "3")], &[]),
        ]);
        assert!(!state.live["s"].may_be_unfinished(&listing(&[]), None));
        assert!(state.live["t"].may_be_unfinished(&listing(&[]), None));
        // A first write abandoned after its save failed (which may have landed): the next write is a
        // first write again, and keeps the abandoned content as the one before it.
        let state = ChainState::replay(&[
            entry(1, g, Op::State, &[("s", "1")], &[]),
            entry(2, g, Op::Abandon, &[], &["s"]),
            entry(3, g, Op::State, &[("s", "2")], &[]),
        ]);
        assert!(state.live["s"].may_be_unfinished(&listing(&[]), None));
        assert_eq!(state.previous["s"].sha256, "1");
    }

    fn chain() -> Vec<Entry> {
        let a = entry(
            1,
            GENESIS_PREV_HASH,
            Op::Seal,
            &[("a", "h1"), ("b", "h2")],
            &[],
        );
        let b = entry(2, &a.hash, Op::Compact, &[("c", "h3")], &["a", "b"]);
        let c = entry(3, &b.hash, Op::State, &[("s", "h4")], &[]);
        let d = entry(4, &c.hash, Op::State, &[("s", "h5")], &[]);
        vec![a, b, c, d]
    }

    fn lines(entries: &[Entry]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|e| [serde_json::to_vec(e).unwrap(), b"\n".to_vec()].concat())
            .collect()
    }

    #[test]
    fn hash_is_over_the_canonical_form_without_hash() {
        let e = &chain()[0];
        let json = serde_json::to_string(e).unwrap();
        let without = json.replace(&format!(",\"hash\":\"{}\"", e.hash), "");
        assert!(without.starts_with("{\"seq\":1,\"time\":"), "{without}");
        assert_eq!(hex::encode(Sha256::digest(without.as_bytes())), e.hash);
    }

    #[test]
    fn an_intact_chain_has_no_breaks_and_replays_to_the_live_set() {
        let bytes = lines(&chain());
        let p = parse(&bytes);
        assert!(p.breaks.is_empty(), "{:?}", p.breaks);
        assert!(!p.torn_tail(bytes.len()));
        let s = ChainState::replay(&p.entries);
        assert_eq!(s.live.keys().collect::<Vec<_>>(), vec!["c", "s"]);
        assert_eq!(s.live["s"].sha256, "h5");
        assert_eq!(s.previous["s"].sha256, "h4");
        assert_eq!(s.retired.keys().collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn edits_removals_and_reorders_break_the_chain_where_they_happen() {
        // Edited in place (hash left as it was).
        let mut c = chain();
        c[1].files[0].sha256 = "forged".into();
        let p = parse(&lines(&c));
        assert_eq!(p.breaks.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![2]);
        // Edited and re-hashed: the next link breaks.
        c[1].hash = c[1].compute_hash();
        assert_eq!(
            parse(&lines(&c))
                .breaks
                .iter()
                .map(|b| b.seq)
                .collect::<Vec<_>>(),
            vec![3]
        );
        // Removed.
        let mut c = chain();
        c.remove(1);
        assert!(
            parse(&lines(&c)).breaks.iter().all(|b| b.seq == 3)
                && !parse(&lines(&c)).breaks.is_empty()
        );
        // Reordered.
        let mut c = chain();
        c.swap(1, 2);
        let seqs: Vec<u64> = parse(&lines(&c)).breaks.iter().map(|b| b.seq).collect();
        assert!(seqs.contains(&3) && seqs.contains(&2), "{seqs:?}");
        // Garbage line.
        let mut bytes = lines(&chain()[..2]);
        bytes.extend_from_slice(b"not json\n");
        let p = parse(&bytes);
        assert_eq!((p.breaks.len(), p.breaks[0].seq), (1, 3));
    }

    #[test]
    fn a_line_without_its_newline_is_a_torn_tail_not_an_entry() {
        let mut bytes = lines(&chain()[..2]);
        let full = bytes.len();
        bytes.extend_from_slice(b"{\"seq\":3,\"ti");
        let p = parse(&bytes);
        assert_eq!((p.entries.len(), p.complete_len), (2, full));
        assert!(p.breaks.is_empty() && p.torn_tail(bytes.len()));
    }
}
