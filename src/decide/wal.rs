//! What a standby must set right in `pg_wal` before it starts, where a timeline forked
//! inside a segment (finding 21 of docs/jepsen.md). Pure: the agent lists `pg_wal`, reads
//! each file's valid end with pg_waldump, and acts on the answer.
//!
//! Recovery reads a segment from the file of the newest timeline of its history that
//! began in or before that segment, and never goes back to an older timeline's file.
//! A standby that switches to a new timeline T receives T's file of the fork segment from
//! the segment's start: until the fork, a copy of the parent's WAL. If its upstream dies
//! before the fork, T's file ends there. Recovery then prefers T's file, replays to its
//! end, finds that the WAL it needs next belongs to the parent, and refuses to go on
//! ("according to history file, WAL location X belongs to timeline P, but previous
//! recovered WAL file came from timeline T"): the standby never starts again. Many quick
//! failovers with few writes fork several timelines in one segment, each file a partial
//! copy of its parent's, and the parent's file may be partial too.
//!
//! Every such file holds a prefix of the same history (what its upstream served), so the
//! longest one holds all the others do. The repair gives that content to the file of the
//! timeline its end belongs to, and removes the newer timelines' files of the segment:
//! recovery then reads the longest prefix and asks its upstream for what follows on the
//! right timeline. A file that holds WAL past its timeline's end (a diverged primary's) is
//! never touched, and nothing is done when one would be read: that is pg_rewind's case.

/// One timeline of the history recovery follows: where it `begin`s (0 for the first) and
/// where the next one forks from it (`end`, `None` for the newest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub timeline: u32,
    pub begin: u64,
    pub end: Option<u64>,
}

/// The chain of timelines ending at `newest`, from its history file's lines (`switches`:
/// each a timeline and the position where its child forked from it, oldest first, as
/// [`crate::postgres::timeline_switches`] reads them). Empty when the lines do not make a
/// chain of rising timelines and positions (a placeholder file raftpg wrote has none).
pub fn spans(switches: &[(u32, u64)], newest: u32) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::with_capacity(switches.len() + 1);
    let mut begin = 0;
    for &(timeline, end) in switches {
        if out.last().is_some_and(|s| s.timeline >= timeline) || end < begin {
            return Vec::new();
        }
        out.push(Span {
            timeline,
            begin,
            end: Some(end),
        });
        begin = end;
    }
    if out.last().is_some_and(|s| s.timeline >= newest) {
        return Vec::new();
    }
    out.push(Span {
        timeline: newest,
        begin,
        end: None,
    });
    out
}

/// What to do to one segment's files before a standby starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    /// Give timeline `.1`'s file of the segment the content of timeline `.0`'s (created
    /// or replaced; `.0`'s is the longest, and its end belongs to `.1`).
    pub copy: Option<(u32, u32)>,
    /// Remove these timelines' files of the segment (each a shorter prefix).
    pub remove: Vec<u32>,
}

/// The repair segment `segno` needs, if any. `files`: the timelines whose file of the
/// segment is in `pg_wal`, each with where its valid WAL ends (`None`: no valid record);
/// other timelines' files are ignored, as recovery ignores them.
pub fn fork_segment_repair(chain: &[Span], segno: u64, seg_size: u64, files: &[(u32, Option<u64>)]) -> Option<Repair> {
    if seg_size == 0 {
        return None;
    }
    let start = segno * seg_size;
    // The files recovery would choose among, newest first, with where their WAL ends.
    let present: Vec<(Span, u64)> = chain
        .iter()
        .rev()
        .filter(|s| s.begin / seg_size <= segno)
        .filter_map(|s| {
            let (_, end) = files.iter().find(|(t, _)| *t == s.timeline)?;
            Some((*s, end.unwrap_or(start).max(start)))
        })
        .collect();
    let &(chosen, chosen_end) = present.first()?;
    if chosen_end >= chosen.begin {
        // Recovery reads on in the chosen file's own timeline.
        return None;
    }
    let diverged = |(s, end): &(Span, u64)| s.end.is_some_and(|e| *end > e);
    let longest = present.iter().filter(|p| !diverged(p)).map(|p| p.1).max()?;
    // The timeline the longest prefix ends in, of those recovery reads this segment from.
    let target = chain
        .iter()
        .rev()
        .find(|s| s.begin / seg_size <= segno && s.begin <= longest)?;
    if present.iter().any(|p| p.0.timeline >= target.timeline && diverged(p)) {
        return None;
    }
    let remove = present
        .iter()
        .filter(|p| p.0.timeline > target.timeline)
        .map(|p| p.0.timeline)
        .collect();
    // A file with no valid record has nothing to give: recovery asks its upstream.
    let copy = match longest == start
        || present
            .iter()
            .any(|p| p.0.timeline == target.timeline && p.1 == longest)
    {
        true => None,
        false => present
            .iter()
            .find(|p| !diverged(p) && p.1 == longest)
            .map(|p| (p.0.timeline, target.timeline)),
    };
    Some(Repair { copy, remove })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 100;

    fn chain(begins: &[u64]) -> Vec<Span> {
        let switches: Vec<(u32, u64)> = begins.iter().enumerate().map(|(i, b)| (i as u32 + 1, *b)).collect();
        spans(&switches, begins.len() as u32 + 1)
    }

    #[test]
    fn spans_follow_the_history_file() {
        assert_eq!(
            spans(&[(1, 150), (3, 170)], 4),
            vec![
                Span {
                    timeline: 1,
                    begin: 0,
                    end: Some(150)
                },
                Span {
                    timeline: 3,
                    begin: 150,
                    end: Some(170)
                },
                Span {
                    timeline: 4,
                    begin: 170,
                    end: None
                },
            ]
        );
        assert_eq!(
            spans(&[], 1),
            vec![Span {
                timeline: 1,
                begin: 0,
                end: None
            }]
        );
        assert!(spans(&[(2, 150), (1, 170)], 4).is_empty(), "timelines fall");
        assert!(spans(&[(1, 170), (2, 150)], 4).is_empty(), "positions fall");
        assert!(spans(&[(1, 170)], 1).is_empty(), "the newest is not newer");
    }

    /// Finding 21 as the 300 s tier met it: the parent's file holds the segment up to the
    /// fork, the child's only a part of it.
    #[test]
    fn a_partial_copy_of_the_parent_gives_way_to_the_parent_content() {
        let c = chain(&[150]);
        assert_eq!(
            fork_segment_repair(&c, 1, SEG, &[(1, Some(150)), (2, Some(130))]),
            Some(Repair {
                copy: Some((1, 2)),
                remove: vec![]
            }),
            "the parent's WAL reaches the fork, which is timeline 2's: it goes into 2's file"
        );
        assert_eq!(
            fork_segment_repair(&c, 1, SEG, &[(1, Some(140)), (2, Some(130))]),
            Some(Repair {
                copy: None,
                remove: vec![2]
            }),
            "the parent's ends before the fork: recovery reads it and asks for the rest of timeline 1"
        );
        assert_eq!(
            fork_segment_repair(&c, 1, SEG, &[(1, Some(120)), (2, Some(130))]),
            Some(Repair {
                copy: Some((2, 1)),
                remove: vec![2]
            }),
            "the child's copy is the longer prefix: it is timeline 1's WAL"
        );
        assert_eq!(
            fork_segment_repair(&c, 1, SEG, &[(2, Some(130))]),
            Some(Repair {
                copy: Some((2, 1)),
                remove: vec![2]
            }),
            "no parent file: the copy becomes it"
        );
    }

    #[test]
    fn nothing_is_done_where_recovery_reads_on() {
        let c = chain(&[150]);
        for files in [
            vec![(1, Some(150)), (2, Some(160))],
            vec![(1, Some(150)), (2, Some(150))],
            vec![(2, Some(200))],
            vec![(1, Some(140))],
            vec![],
        ] {
            assert_eq!(fork_segment_repair(&c, 1, SEG, &files), None, "{files:?}");
        }
        // The segment before the fork, and one after it: timeline 2 is not read there or
        // begins before it.
        assert_eq!(fork_segment_repair(&c, 0, SEG, &[(1, Some(40)), (2, Some(30))]), None);
        assert_eq!(fork_segment_repair(&c, 2, SEG, &[(1, Some(250)), (2, Some(230))]), None);
    }

    #[test]
    fn a_diverged_file_is_left_to_pg_rewind() {
        let c = chain(&[150]);
        // Timeline 1's file holds WAL past the fork: this member wrote or received what the
        // new primary never had. Recovery would read it once timeline 2's is gone.
        assert_eq!(fork_segment_repair(&c, 1, SEG, &[(1, Some(170)), (2, Some(130))]), None);
        // A diverged file older than the one recovery is to read stays, unread.
        let c = chain(&[120, 150]);
        assert_eq!(
            fork_segment_repair(&c, 1, SEG, &[(1, Some(140)), (2, Some(150)), (3, Some(130))]),
            Some(Repair {
                copy: Some((2, 3)),
                remove: vec![]
            }),
            "timeline 2's file reaches the fork, where timeline 3 begins"
        );
    }

    /// Many quick failovers with few writes fork several timelines in one segment.
    #[test]
    fn a_chain_of_partial_copies_keeps_the_longest() {
        let c = chain(&[150, 160, 170]);
        assert_eq!(
            fork_segment_repair(
                &c,
                1,
                SEG,
                &[(1, Some(120)), (2, Some(140)), (3, Some(110)), (4, Some(130))]
            ),
            Some(Repair {
                copy: Some((2, 1)),
                remove: vec![4, 3, 2]
            })
        );
        assert_eq!(
            fork_segment_repair(&c, 1, SEG, &[(2, Some(155)), (3, Some(150)), (4, Some(130))]),
            Some(Repair {
                copy: None,
                remove: vec![4, 3]
            }),
            "timeline 2's file reaches into timeline 2"
        );
        assert_eq!(
            fork_segment_repair(&c, 1, SEG, &[(4, None)]),
            Some(Repair {
                copy: None,
                remove: vec![4]
            }),
            "no valid WAL anywhere: recovery asks its upstream for timeline 1 from the segment's start"
        );
    }

    /// Every chain of up to four timelines with forks before, in, and at the end of
    /// segment 1, and every combination of files of that segment: absent, without a valid
    /// record, or ending anywhere. Recovery as PostgreSQL does it: the newest timeline's
    /// file that began in or before the segment, read to its end, which must lie in that
    /// timeline. A repair is made only where recovery would stop, makes it read on, keeps
    /// the longest prefix of the history, and leaves diverged files alone.
    #[test]
    fn every_small_case_reads_on_loses_nothing_and_leaves_diverged_files() {
        const BEGINS: [u64; 5] = [50, 130, 150, 170, 200];
        const ENDS: [Option<u64>; 8] = [
            None,
            Some(100),
            Some(120),
            Some(130),
            Some(150),
            Some(160),
            Some(170),
            Some(200),
        ];
        let start = SEG;
        let read = |c: &[Span], files: &[(u32, Option<u64>)]| -> Option<(Span, u64)> {
            c.iter().rev().filter(|s| s.begin / SEG <= 1).find_map(|s| {
                let (_, e) = files.iter().find(|(t, _)| *t == s.timeline)?;
                Some((*s, e.unwrap_or(start).max(start)))
            })
        };
        let diverged = |c: &[Span], t: u32, e: Option<u64>| {
            let s = c.iter().find(|s| s.timeline == t).unwrap();
            s.end.is_some_and(|end| e.unwrap_or(start) > end)
        };
        let (mut repaired, mut left) = (0, 0);
        for n in 0..=3usize {
            let mut begins = vec![0usize; n];
            loop {
                let c = chain(&begins.iter().map(|i| BEGINS[*i]).collect::<Vec<_>>());
                let tls = n + 1;
                for code in 0..(ENDS.len() + 1).pow(tls as u32) {
                    let mut files = Vec::new();
                    let mut k = code;
                    for t in 1..=tls as u32 {
                        if k % (ENDS.len() + 1) > 0 {
                            files.push((t, ENDS[k % (ENDS.len() + 1) - 1]));
                        }
                        k /= ENDS.len() + 1;
                    }
                    let stops = read(&c, &files).is_some_and(|(s, e)| e < s.begin);
                    let repair = fork_segment_repair(&c, 1, SEG, &files);
                    let Some(r) = repair else {
                        if stops {
                            left += 1;
                            assert!(
                                files.iter().any(|(t, e)| diverged(&c, *t, *e)),
                                "a stop left without a diverged file: {c:?} {files:?}"
                            );
                        }
                        continue;
                    };
                    repaired += 1;
                    assert!(stops, "a repair where recovery reads on: {c:?} {files:?} {r:?}");
                    let mut after = files.clone();
                    if let Some((from, to)) = r.copy {
                        let e = files.iter().find(|f| f.0 == from).unwrap().1;
                        let old = files.iter().find(|f| f.0 == to);
                        assert!(
                            old.is_none_or(|o| !diverged(&c, to, o.1) && o.1.unwrap_or(start) <= e.unwrap_or(start))
                        );
                        after.retain(|f| f.0 != to);
                        after.push((to, e));
                    }
                    for t in &r.remove {
                        let f = files.iter().find(|f| f.0 == *t).expect("removes a file there is");
                        assert!(
                            !diverged(&c, f.0, f.1),
                            "removed a diverged file: {c:?} {files:?} {r:?}"
                        );
                        after.retain(|f| f.0 != *t);
                    }
                    // No file at all: recovery asks its upstream from the segment's start.
                    let (s, e) = read(&c, &after).unwrap_or((c[0], start));
                    assert!(e >= s.begin, "still stops: {c:?} {files:?} {r:?}");
                    let longest = files
                        .iter()
                        .filter(|(t, _)| c.iter().any(|s| s.timeline == *t && s.begin / SEG <= 1))
                        .filter(|(t, e)| !diverged(&c, *t, *e))
                        .map(|f| f.1.unwrap_or(start))
                        .max()
                        .unwrap();
                    assert!(e >= longest, "lost WAL: {c:?} {files:?} {r:?}");
                }
                // The next non-decreasing choice of fork positions.
                let Some(i) = (0..n).rev().find(|i| begins[*i] + 1 < BEGINS.len()) else {
                    break;
                };
                begins[i] += 1;
                for j in i + 1..n {
                    begins[j] = begins[i];
                }
            }
        }
        assert!(repaired > 1000 && left > 100, "{repaired} repaired, {left} left");
    }
}
