//! Decoder for PostgreSQL's `pgoutput` logical replication messages.
//!
//! We read the slot with `proto_version '1'`, text-format values and neither
//! streaming nor two-phase enabled, so only the protocol-1 message set is
//! accepted. Anything else is reported as an error rather than guessed at:
//! a CDC daemon that silently mis-parses a change would write wrong summary
//! rows, which is far worse than stopping and saying why.
//!
//! The decoder is zero-copy for the hot path. Insert/Update/Delete keep a
//! refcounted [`Bytes`] slice of the input and walk it on access, so a change
//! costs no heap allocation however many columns it has. The tuple section is
//! fully validated at decode time, which is what lets [`TupleData::get`] and
//! [`TupleData::iter`] be infallible.
//!
//! All byte offsets in [`DecodeError`] are relative to the start of the
//! XLogData payload (offset 0 is the message tag), so an error can be matched
//! against a hex dump of the payload.

use std::fmt;
use std::iter::FusedIterator;
use std::ops::Range;

use bytes::Bytes;

/// One decoded `pgoutput` message.
///
/// Timestamps stay as raw microseconds since the PostgreSQL epoch
/// (2000-01-01 UTC) because the consumer only compares and forwards them;
/// converting here would force a time crate and a lossy choice on everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// Start of a transaction; `final_lsn` is the LSN of its commit record.
    Begin {
        final_lsn: u64,
        commit_time_micros: i64,
        xid: u32,
    },
    /// End of a transaction. `end_lsn` is what to confirm as flushed once
    /// the transaction's effects are durable.
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time_micros: i64,
    },
    /// The transaction was replicated into this server from `name`.
    Origin {
        commit_lsn: u64,
        name: Bytes,
    },
    /// Schema of a table; always sent before the first change that uses it
    /// and again after any schema change, so consumers must cache by id.
    Relation(Relation),
    /// A non-builtin type referenced by a later Relation message.
    Type {
        id: u32,
        namespace: Bytes,
        name: Bytes,
    },
    Insert {
        relation_id: u32,
        new: TupleData,
    },
    /// `old` is present only if the replica identity columns changed
    /// (`Key`) or the table has `REPLICA IDENTITY FULL` (`Full`).
    Update {
        relation_id: u32,
        old: Option<OldTuple>,
        new: TupleData,
    },
    Delete {
        relation_id: u32,
        old: OldTuple,
    },
    /// `options` bit 0 is CASCADE, bit 1 is RESTART IDENTITY.
    Truncate {
        options: u8,
        relation_ids: Vec<u32>,
    },
    /// A `pg_logical_emit_message` payload; `flags` bit 0 means transactional.
    Message {
        flags: u8,
        lsn: u64,
        prefix: Bytes,
        content: Bytes,
    },
}

/// The pre-image carried by Update and Delete. The variant matters to the
/// consumer: a `Key` tuple has only the replica identity columns filled in
/// (every other column is Null), so it must not be read as a full row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Wire marker `'K'`: replica identity columns only.
    Key(TupleData),
    /// Wire marker `'O'`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

impl OldTuple {
    /// Lets callers that only want column values ignore which kind it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// Table schema as sent by the server. Owned strings are fine here: these
/// arrive once per table per session (plus after DDL), not per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    /// Empty for `pg_catalog`, as the server sends it.
    pub namespace: String,
    pub name: String,
    /// `relreplident`: `b'd'` default, `b'n'` nothing, `b'f'` full, `b'i'` index.
    pub replica_identity: u8,
    /// In wire order, which is the order of values in every tuple for this
    /// relation (generated columns are omitted by the server).
    pub columns: Vec<Column>,
}

impl Relation {
    /// Maps a column name to its position in tuples of this relation, so
    /// consumers can resolve names once per Relation message and then index.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Bit 0 set means the column is part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`; -1 when the type has no modifier.
    pub type_modifier: i32,
}

impl Column {
    /// Whether this column appears in `OldTuple::Key` pre-images.
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// The column values of one row, still in wire encoding.
///
/// Holds the validated column section of the tuple (everything after the
/// Int16 count) and walks it on each access. Tables we replicate are narrow,
/// so an O(n) `get` is cheaper than allocating an index per change.
#[derive(Clone, PartialEq, Eq)]
pub struct TupleData {
    /// Invariant: exactly `len` well-formed column entries, nothing else.
    data: Bytes,
    len: u16,
}

impl TupleData {
    /// Number of columns sent. pgoutput sends every non-generated column,
    /// so this should equal the cached `Relation::columns.len()`; a mismatch
    /// means the consumer's relation cache is stale, which it should check
    /// rather than index blindly.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Value of column `index` in Relation column order, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<Value<'_>> {
        self.iter().nth(index)
    }

    /// Values in Relation column order. Returns a concrete iterator type
    /// (rather than `impl Iterator`) so callers can use `len()` and `zip`
    /// with exact sizes.
    pub fn iter(&self) -> Values<'_> {
        Values {
            data: &self.data,
            pos: 0,
            remaining: self.len,
        }
    }
}

impl fmt::Debug for TupleData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a TupleData {
    type Item = Value<'a>;
    type IntoIter = Values<'a>;

    fn into_iter(self) -> Values<'a> {
        self.iter()
    }
}

/// Iterator over a [`TupleData`]'s values.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    data: &'a [u8],
    pos: usize,
    remaining: u16,
}

impl<'a> Iterator for Values<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // Indexing cannot go out of bounds: `Reader::tuple` checked every
        // entry of `data` and `TupleData` is immutable.
        let d = self.data;
        let kind = d[self.pos];
        let value = match kind {
            b'n' => {
                self.pos += 1;
                Value::Null
            }
            b'u' => {
                self.pos += 1;
                Value::UnchangedToast
            }
            _ => {
                let p = self.pos + 1;
                let len = u32::from_be_bytes([d[p], d[p + 1], d[p + 2], d[p + 3]]) as usize;
                let bytes = &d[p + 4..p + 4 + len];
                self.pos = p + 4 + len;
                if kind == b't' {
                    Value::Text(bytes)
                } else {
                    Value::Binary(bytes)
                }
            }
        };
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.remaining);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Values<'_> {}
impl FusedIterator for Values<'_> {}

/// One column value, borrowed from the message buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    /// A TOASTed value that the UPDATE did not change; the server omits it
    /// to save bandwidth, so the consumer must keep its previous value.
    UnchangedToast,
    /// Text-format value (the type's output function), not NUL-terminated.
    Text(&'a [u8]),
    /// Binary-format value; only sent if the slot was opened with `binary`.
    Binary(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The text value as `&str`, or `None` for non-text or non-UTF-8 data.
    /// Postgres sends text in the connection's client_encoding, which we set
    /// to UTF8; `None` here therefore indicates a misconfigured connection.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Raw bytes of a Text or Binary value, for callers that parse numbers
    /// directly without a UTF-8 check.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Text(b) | Value::Binary(b) => Some(b),
            _ => None,
        }
    }
}

/// Why a payload could not be decoded. Every variant carries (or implies)
/// the byte offset of the problem so a failing payload can be diagnosed
/// from logs without a debugger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message (no tag byte at offset 0)")]
    Empty,
    #[error("unknown pgoutput message tag {} at byte 0", ShowByte(*.tag))]
    UnknownTag { tag: u8 },
    /// A valid pgoutput message that only appears with options we never
    /// request (streaming, two_phase, proto_version > 1); seeing one means
    /// the slot was configured by someone else.
    #[error(
        "unsupported pgoutput {kind} message (tag {}) at byte 0; \
         cdc-worker requires proto_version 1 without streaming or two_phase",
        ShowByte(*.tag)
    )]
    Unsupported { tag: u8, kind: &'static str },
    #[error("truncated {field} at byte {offset}: need {needed} byte(s), {available} available")]
    Truncated {
        field: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("negative length {length} for {field} at byte {offset}")]
    NegativeLength {
        field: &'static str,
        offset: usize,
        length: i32,
    },
    #[error("{field} at byte {offset} declares {length} byte(s) but only {available} remain")]
    LengthOutOfBounds {
        field: &'static str,
        offset: usize,
        length: usize,
        available: usize,
    },
    #[error("{field} starting at byte {offset} has no NUL terminator")]
    UnterminatedString { field: &'static str, offset: usize },
    #[error("{field} starting at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str, offset: usize },
    #[error("unexpected tuple marker {} at byte {offset}; expected {expected}", ShowByte(*.found))]
    UnexpectedTupleMarker {
        offset: usize,
        found: u8,
        expected: &'static str,
    },
    #[error("unknown kind {} for tuple column {column} at byte {offset}", ShowByte(*.kind))]
    UnknownColumnKind {
        offset: usize,
        column: usize,
        kind: u8,
    },
    #[error("{count} trailing byte(s) at byte {offset} after a complete {message} message")]
    TrailingBytes {
        message: &'static str,
        offset: usize,
        count: usize,
    },
}

impl DecodeError {
    /// Offset of the offending byte, for structured logging.
    pub fn offset(&self) -> usize {
        match *self {
            DecodeError::Empty
            | DecodeError::UnknownTag { .. }
            | DecodeError::Unsupported { .. } => 0,
            DecodeError::Truncated { offset, .. }
            | DecodeError::NegativeLength { offset, .. }
            | DecodeError::LengthOutOfBounds { offset, .. }
            | DecodeError::UnterminatedString { offset, .. }
            | DecodeError::InvalidUtf8 { offset, .. }
            | DecodeError::UnexpectedTupleMarker { offset, .. }
            | DecodeError::UnknownColumnKind { offset, .. }
            | DecodeError::TrailingBytes { offset, .. } => offset,
        }
    }
}

/// Renders protocol bytes as `'B' (0x42)` so tags are recognisable in logs
/// while non-printable garbage is still shown unambiguously.
struct ShowByte(u8);

impl fmt::Display for ShowByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' ({:#04x})", self.0 as char, self.0)
        } else {
            write!(f, "{:#04x}", self.0)
        }
    }
}

/// Decodes one XLogData payload.
///
/// Takes `&Bytes` rather than `&[u8]` so tuple data and names can be
/// returned as cheap refcounted slices of the same allocation.
pub fn decode(buf: &Bytes) -> Result<LogicalMessage, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    let mut r = Reader { buf, pos: 1 };
    let (message, name) = match tag {
        b'B' => (
            LogicalMessage::Begin {
                final_lsn: r.u64("Begin final LSN")?,
                commit_time_micros: r.i64("Begin commit timestamp")?,
                xid: r.u32("Begin xid")?,
            },
            "Begin",
        ),
        b'C' => (
            LogicalMessage::Commit {
                flags: r.u8("Commit flags")?,
                commit_lsn: r.u64("Commit LSN")?,
                end_lsn: r.u64("Commit end LSN")?,
                commit_time_micros: r.i64("Commit timestamp")?,
            },
            "Commit",
        ),
        b'O' => (
            LogicalMessage::Origin {
                commit_lsn: r.u64("Origin commit LSN")?,
                name: r.cstr_bytes("Origin name")?,
            },
            "Origin",
        ),
        b'R' => (LogicalMessage::Relation(r.relation()?), "Relation"),
        b'Y' => (
            LogicalMessage::Type {
                id: r.u32("Type id")?,
                namespace: r.cstr_bytes("Type namespace")?,
                name: r.cstr_bytes("Type name")?,
            },
            "Type",
        ),
        b'I' => {
            let relation_id = r.u32("Insert relation id")?;
            r.expect_marker(b'N', "'N'")?;
            let new = r.tuple()?;
            (LogicalMessage::Insert { relation_id, new }, "Insert")
        }
        b'U' => {
            let relation_id = r.u32("Update relation id")?;
            let offset = r.pos;
            let old = match r.u8("Update tuple marker")? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                found => {
                    return Err(DecodeError::UnexpectedTupleMarker {
                        offset,
                        found,
                        expected: "'K', 'O' or 'N'",
                    })
                }
            };
            if old.is_some() {
                r.expect_marker(b'N', "'N'")?;
            }
            let new = r.tuple()?;
            (
                LogicalMessage::Update {
                    relation_id,
                    old,
                    new,
                },
                "Update",
            )
        }
        b'D' => {
            let relation_id = r.u32("Delete relation id")?;
            let offset = r.pos;
            let old = match r.u8("Delete tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                found => {
                    return Err(DecodeError::UnexpectedTupleMarker {
                        offset,
                        found,
                        expected: "'K' or 'O'",
                    })
                }
            };
            (LogicalMessage::Delete { relation_id, old }, "Delete")
        }
        b'T' => (r.truncate()?, "Truncate"),
        b'M' => (
            LogicalMessage::Message {
                flags: r.u8("Message flags")?,
                lsn: r.u64("Message LSN")?,
                prefix: r.cstr_bytes("Message prefix")?,
                content: {
                    let range = r.len_prefixed("Message content")?;
                    buf.slice(range)
                },
            },
            "Message",
        ),
        b'S' => return Err(unsupported(tag, "Stream Start")),
        b'E' => return Err(unsupported(tag, "Stream Stop")),
        b'c' => return Err(unsupported(tag, "Stream Commit")),
        b'A' => return Err(unsupported(tag, "Stream Abort")),
        b'p' => return Err(unsupported(tag, "Stream Prepare")),
        b'b' => return Err(unsupported(tag, "Begin Prepare")),
        b'P' => return Err(unsupported(tag, "Prepare")),
        b'K' => return Err(unsupported(tag, "Commit Prepared")),
        b'r' => return Err(unsupported(tag, "Rollback Prepared")),
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    r.finish(name)?;
    Ok(message)
}

fn unsupported(tag: u8, kind: &'static str) -> DecodeError {
    DecodeError::Unsupported { tag, kind }
}

/// Rejects negative counts/lengths, which the server never sends and which
/// would otherwise wrap into huge sizes.
fn non_negative(value: i32, offset: usize, field: &'static str) -> Result<usize, DecodeError> {
    usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
        field,
        offset,
        length: value,
    })
}

/// Bounds-checked big-endian cursor; every read reports its own offset so
/// errors point at the exact field that was bad.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        if n > available {
            return Err(DecodeError::Truncated {
                field,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.array(field).map(i16::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_be_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    /// Int32 length followed by that many bytes; returns the payload range.
    fn len_prefixed(&mut self, field: &'static str) -> Result<Range<usize>, DecodeError> {
        let offset = self.pos;
        let raw = self.i32(field)?;
        let length = non_negative(raw, offset, field)?;
        let available = self.remaining();
        if length > available {
            return Err(DecodeError::LengthOutOfBounds {
                field,
                offset,
                length,
                available,
            });
        }
        let start = self.pos;
        self.pos += length;
        Ok(start..self.pos)
    }

    /// NUL-terminated string; returns its range without the terminator.
    fn cstr(&mut self, field: &'static str) -> Result<Range<usize>, DecodeError> {
        let start = self.pos;
        let nul = self.buf[start..].iter().position(|&b| b == 0).ok_or(
            DecodeError::UnterminatedString {
                field,
                offset: start,
            },
        )?;
        self.pos = start + nul + 1;
        Ok(start..start + nul)
    }

    fn cstr_bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let range = self.cstr(field)?;
        Ok(self.buf.slice(range))
    }

    fn cstr_string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let range = self.cstr(field)?;
        let offset = range.start;
        std::str::from_utf8(&self.buf[range])
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { field, offset })
    }

    fn expect_marker(
        &mut self,
        expected_byte: u8,
        expected: &'static str,
    ) -> Result<(), DecodeError> {
        let offset = self.pos;
        let found = self.u8("tuple marker")?;
        if found == expected_byte {
            Ok(())
        } else {
            Err(DecodeError::UnexpectedTupleMarker {
                offset,
                found,
                expected,
            })
        }
    }

    /// Validates a TupleData section once so later access cannot fail.
    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let count_offset = self.pos;
        let raw = self.i16("tuple column count")?;
        let count = non_negative(i32::from(raw), count_offset, "tuple column count")?;
        let start = self.pos;
        for column in 0..count {
            let offset = self.pos;
            match self.u8("tuple column kind")? {
                b'n' | b'u' => {}
                b't' | b'b' => {
                    self.len_prefixed("tuple column value")?;
                }
                kind => {
                    return Err(DecodeError::UnknownColumnKind {
                        offset,
                        column,
                        kind,
                    })
                }
            }
        }
        Ok(TupleData {
            data: self.buf.slice(start..self.pos),
            // `count` came from a non-negative i16, so it fits.
            len: raw as u16,
        })
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("Relation id")?;
        let namespace = self.cstr_string("Relation namespace")?;
        let name = self.cstr_string("Relation name")?;
        let replica_identity = self.u8("Relation replica identity")?;
        let count_offset = self.pos;
        let raw = self.i16("Relation column count")?;
        let count = non_negative(i32::from(raw), count_offset, "Relation column count")?;
        // Smallest column entry: flags(1) + empty name(1) + type(4) + typmod(4).
        const MIN_COLUMN_LEN: usize = 10;
        let mut columns = Vec::with_capacity(count.min(self.remaining() / MIN_COLUMN_LEN));
        for _ in 0..count {
            columns.push(Column {
                flags: self.u8("Relation column flags")?,
                name: self.cstr_string("Relation column name")?,
                type_oid: self.u32("Relation column type")?,
                type_modifier: self.i32("Relation column type modifier")?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn truncate(&mut self) -> Result<LogicalMessage, DecodeError> {
        const FIELD: &str = "Truncate relation ids";
        let count_offset = self.pos;
        let raw = self.i32("Truncate relation count")?;
        let count = non_negative(raw, count_offset, "Truncate relation count")?;
        let options = self.u8("Truncate options")?;
        // Check the whole array fits before allocating for it.
        let available = self.remaining();
        match count.checked_mul(4) {
            Some(length) if length <= available => {}
            other => {
                return Err(DecodeError::LengthOutOfBounds {
                    field: FIELD,
                    offset: count_offset,
                    length: other.unwrap_or(usize::MAX),
                    available,
                })
            }
        }
        let mut relation_ids = Vec::with_capacity(count);
        for _ in 0..count {
            relation_ids.push(self.u32(FIELD)?);
        }
        Ok(LogicalMessage::Truncate {
            options,
            relation_ids,
        })
    }

    fn finish(&self, message: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message,
                offset: self.pos,
                count,
            }),
        }
    }
}
