//! Value types the protocol passes around, each with one spelling.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A WAL position. PostgreSQL prints it as two hexadecimal halves, `X/Y`; the replicated
/// history and every message encode it that way too (a string), as they did before this
/// type existed, so stored snapshots and older peers read and write the same bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's `X/Y` (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        let (hi, lo) = (u32::from_str_radix(hi, 16).ok()?, u32::from_str_radix(lo, 16).ok()?);
        Some(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(text: &str) -> Result<Lsn, String> {
        Lsn::parse(text).ok_or_else(|| format!("{text:?} is not an LSN (two hexadecimal numbers, X/Y)"))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A primary's generation: 0 before the first primary, one more at each change of primary
/// the Raft log commits. Every lease, report and fence names the generation it belongs to.
/// Encoded as the bare number it replaced (serde `transparent`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Generation {
    /// The generation a change of primary from this one starts.
    pub fn next(self) -> Generation {
        Generation(self.0 + 1)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Generation {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Generation, Self::Err> {
        text.trim().parse().map(Generation)
    }
}

/// A PostgreSQL timeline ID: 1 at initdb, one more at each promotion. Encoded as the bare
/// number it replaced (serde `transparent`), so stored entries, snapshots and older peers
/// read and write the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timeline(pub u32);

impl Timeline {
    /// No timeline: 0, as PostgreSQL writes one that is not set (`minRecoveryPointTLI`
    /// before recovery began), and as a report says it read none.
    pub const NONE: Timeline = Timeline(0);

    /// The timeline initdb starts.
    pub const FIRST: Timeline = Timeline(1);

    /// The timeline a promotion from this one starts.
    pub fn next(self) -> Timeline {
        Timeline(self.0 + 1)
    }
}

impl FromStr for Timeline {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Timeline, Self::Err> {
        text.trim().parse().map(Timeline)
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lsn_reads_and_prints_as_postgresql_does() {
        assert_eq!(Lsn::parse("3/60"), Some(Lsn(0x3_0000_0060)));
        assert_eq!(Lsn::parse(" 0/3000060 "), Some(Lsn(0x300_0060)));
        assert_eq!(Lsn(0x3_0000_0060).to_string(), "3/60");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        for bad in ["nope", "1/", "/1", "1/2/3", "100000000/0", "-1/0", ""] {
            assert_eq!(Lsn::parse(bad), None, "{bad}");
        }
        assert!("x".parse::<Lsn>().unwrap_err().contains("not an LSN"));
    }

    #[test]
    fn an_lsn_is_encoded_as_the_string_it_replaced() {
        let lsn = Lsn(0x1_0000_0AB0);
        assert_eq!(
            crate::raft::codec::encode(&lsn),
            crate::raft::codec::encode(&"1/AB0".to_string())
        );
        assert_eq!(serde_json::to_string(&lsn).unwrap(), "\"1/AB0\"");
        let back: Lsn = crate::raft::codec::decode(&crate::raft::codec::encode(&"1/AB0".to_string()), "lsn").unwrap();
        assert_eq!(back, lsn);
        assert!(crate::raft::codec::decode::<Lsn>(&crate::raft::codec::encode(&"garbage".to_string()), "lsn").is_err());
    }

    #[test]
    fn a_generation_is_encoded_as_the_number_it_replaced() {
        let encode = crate::raft::codec::encode::<Generation>;
        assert_eq!(encode(&Generation(300)), crate::raft::codec::encode(&300u64));
        assert_eq!(serde_json::to_string(&Generation(7)).unwrap(), "7");
        assert_eq!(Generation::default().next(), Generation(1));
        assert_eq!(Generation(12).to_string(), "12");
        assert_eq!(" 12".parse::<Generation>(), Ok(Generation(12)));
    }

    #[test]
    fn a_timeline_is_encoded_as_the_number_it_replaced() {
        let encode = crate::raft::codec::encode::<Option<Timeline>>;
        assert_eq!(encode(&Some(Timeline(300))), crate::raft::codec::encode(&Some(300u32)));
        assert_eq!(encode(&None), crate::raft::codec::encode(&None::<u32>));
        assert_eq!(serde_json::to_string(&Timeline(7)).unwrap(), "7");
        assert_eq!(Timeline::FIRST.next(), Timeline(2));
        assert_eq!(Timeline(12).to_string(), "12");
    }
}
