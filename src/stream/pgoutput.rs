//! Decoder for PostgreSQL's `pgoutput` logical replication messages.
//!
//! We read the slot with `proto_version '2'` and `streaming 'on'` (or, when configured,
//! `proto_version '1'` without streaming), text-format values and no two-phase, so the
//! protocol-1 messages plus the four stream messages are accepted. Anything else is
//! reported as an error rather than guessed at: a CDC daemon that silently mis-parses a
//! change would write wrong summary rows, which is far worse than stopping and saying why.
//!
//! With streaming, the walsender sends a large transaction while it is still running, in
//! blocks between Stream Start and Stream Stop; inside a block every Relation, Type,
//! Insert, Update, Delete, Truncate and Message carries the xid of the (sub)transaction
//! that made it right after the tag. Whether a payload has that prefix depends only on
//! where it sits in the stream, so the caller says where ([`decode`] outside a block,
//! [`decode_in_stream`] inside one) and each rejects what cannot appear there.
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
    /// A block of changes of the running top-level transaction `xid` follows, up to
    /// Stream Stop. `first_segment`: the first block of `xid` in this session (after a
    /// reconnect an unfinished transaction starts again with a first segment).
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    /// The end of a stream block.
    StreamStop,
    /// The streamed transaction `xid` committed; as [`LogicalMessage::Commit`].
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time_micros: i64,
    },
    /// Streamed changes were rolled back: the whole of top-level transaction `xid` when
    /// `subxid == xid`, else its subtransaction `subxid` (ROLLBACK TO SAVEPOINT).
    StreamAbort {
        xid: u32,
        subxid: u32,
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
    /// request (two_phase, proto_version > 2); seeing one means the slot was
    /// configured by someone else.
    #[error(
        "unsupported pgoutput {kind} message (tag {}) at byte 0; \
         cdc-worker reads proto_version 1, or 2 with streaming, without two_phase",
        ShowByte(*.tag)
    )]
    Unsupported { tag: u8, kind: &'static str },
    /// A message where the protocol never puts it: a transaction boundary inside a
    /// stream block, or Stream Stop outside one. The stream is out of step.
    #[error("pgoutput {kind} message (tag {}) {place}", ShowByte(*.tag))]
    Misplaced {
        tag: u8,
        kind: &'static str,
        place: &'static str,
    },
    #[error("{field} at byte {offset} is {value}; the protocol allows only 0 or 1")]
    InvalidFlag {
        field: &'static str,
        offset: usize,
        value: u8,
    },
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
            | DecodeError::Unsupported { .. }
            | DecodeError::Misplaced { .. } => 0,
            DecodeError::Truncated { offset, .. }
            | DecodeError::NegativeLength { offset, .. }
            | DecodeError::LengthOutOfBounds { offset, .. }
            | DecodeError::UnterminatedString { offset, .. }
            | DecodeError::InvalidUtf8 { offset, .. }
            | DecodeError::UnexpectedTupleMarker { offset, .. }
            | DecodeError::UnknownColumnKind { offset, .. }
            | DecodeError::InvalidFlag { offset, .. }
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

/// Decodes one XLogData payload that arrived outside a stream block.
///
/// Takes `&Bytes` rather than `&[u8]` so tuple data and names can be
/// returned as cheap refcounted slices of the same allocation.
pub fn decode(buf: &Bytes) -> Result<LogicalMessage, DecodeError> {
    decode_at(buf, false).map(|(_, message)| message)
}

/// Decodes one XLogData payload that arrived inside a stream block (after Stream Start,
/// up to and including Stream Stop). Returns the xid of the (sub)transaction a change,
/// Relation, Type or Message belongs to; `None` for Stream Stop and for the Origin that
/// may follow Stream Start (neither carries one).
pub fn decode_in_stream(buf: &Bytes) -> Result<(Option<u32>, LogicalMessage), DecodeError> {
    decode_at(buf, true)
}

fn decode_at(buf: &Bytes, in_block: bool) -> Result<(Option<u32>, LogicalMessage), DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    let mut r = Reader { buf, pos: 1 };
    let place = match (in_block, tag) {
        (true, b'B' | b'C' | b'S' | b'c' | b'A') => Some("inside a stream block"),
        (false, b'E') => Some("outside a stream block"),
        _ => None,
    };
    if let Some(place) = place {
        return Err(DecodeError::Misplaced {
            tag,
            kind: kind(tag),
            place,
        });
    }
    let xid = match tag {
        b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M' if in_block => {
            Some(r.u32("streamed change xid")?)
        }
        _ => None,
    };
    let message = match tag {
        b'B' => LogicalMessage::Begin {
            final_lsn: r.u64("Begin final LSN")?,
            commit_time_micros: r.i64("Begin commit timestamp")?,
            xid: r.u32("Begin xid")?,
        },
        b'C' => LogicalMessage::Commit {
            flags: r.u8("Commit flags")?,
            commit_lsn: r.u64("Commit LSN")?,
            end_lsn: r.u64("Commit end LSN")?,
            commit_time_micros: r.i64("Commit timestamp")?,
        },
        b'O' => LogicalMessage::Origin {
            commit_lsn: r.u64("Origin commit LSN")?,
            name: r.cstr_bytes("Origin name")?,
        },
        b'R' => LogicalMessage::Relation(r.relation()?),
        b'Y' => LogicalMessage::Type {
            id: r.u32("Type id")?,
            namespace: r.cstr_bytes("Type namespace")?,
            name: r.cstr_bytes("Type name")?,
        },
        b'I' => {
            let relation_id = r.u32("Insert relation id")?;
            r.expect_marker(b'N', "'N'")?;
            let new = r.tuple()?;
            LogicalMessage::Insert { relation_id, new }
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
            LogicalMessage::Update {
                relation_id,
                old,
                new,
            }
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
            LogicalMessage::Delete { relation_id, old }
        }
        b'T' => r.truncate()?,
        b'M' => LogicalMessage::Message {
            flags: r.u8("Message flags")?,
            lsn: r.u64("Message LSN")?,
            prefix: r.cstr_bytes("Message prefix")?,
            content: {
                let range = r.len_prefixed("Message content")?;
                buf.slice(range)
            },
        },
        b'S' => LogicalMessage::StreamStart {
            xid: r.u32("Stream Start xid")?,
            first_segment: r.flag("Stream Start first-segment flag")?,
        },
        b'E' => LogicalMessage::StreamStop,
        b'c' => LogicalMessage::StreamCommit {
            xid: r.u32("Stream Commit xid")?,
            flags: r.u8("Stream Commit flags")?,
            commit_lsn: r.u64("Stream Commit LSN")?,
            end_lsn: r.u64("Stream Commit end LSN")?,
            commit_time_micros: r.i64("Stream Commit timestamp")?,
        },
        // Protocol 4 with `streaming 'parallel'` appends the abort LSN and time; we
        // never ask for that, so they are trailing bytes here.
        b'A' => LogicalMessage::StreamAbort {
            xid: r.u32("Stream Abort xid")?,
            subxid: r.u32("Stream Abort subtransaction xid")?,
        },
        b'p' | b'b' | b'P' | b'K' | b'r' => return Err(unsupported(tag, kind(tag))),
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    r.finish(kind(tag))?;
    Ok((xid, message))
}

/// The protocol's name of a message kind, for errors.
fn kind(tag: u8) -> &'static str {
    match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'p' => "Stream Prepare",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        _ => "unknown",
    }
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

    /// A byte the protocol writes as 0 or 1.
    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let offset = self.pos;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::InvalidFlag {
                field,
                offset,
                value,
            }),
        }
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

/// Test-only encoder, kept `pub(crate)` so other modules' tests can build
/// realistic payloads instead of hand-assembling bytes.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use bytes::BufMut;

    /// Owned column value, the encoder's counterpart of [`Value`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Val {
        Null,
        Toast,
        Text(Vec<u8>),
        Bin(Vec<u8>),
    }

    impl Val {
        pub(crate) fn text(s: &str) -> Val {
            Val::Text(s.as_bytes().to_vec())
        }
    }

    /// Owned model of [`LogicalMessage`], so tests can state expectations
    /// and proptest can generate messages without lifetimes or `Bytes`.
    /// Old tuples carry their wire marker (`b'K'` or `b'O'`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Msg {
        Begin {
            final_lsn: u64,
            commit_time_micros: i64,
            xid: u32,
        },
        Commit {
            flags: u8,
            commit_lsn: u64,
            end_lsn: u64,
            commit_time_micros: i64,
        },
        Origin {
            commit_lsn: u64,
            name: Vec<u8>,
        },
        Relation(Relation),
        Type {
            id: u32,
            namespace: Vec<u8>,
            name: Vec<u8>,
        },
        Insert {
            relation_id: u32,
            new: Vec<Val>,
        },
        Update {
            relation_id: u32,
            old: Option<(u8, Vec<Val>)>,
            new: Vec<Val>,
        },
        Delete {
            relation_id: u32,
            old: (u8, Vec<Val>),
        },
        Truncate {
            options: u8,
            relation_ids: Vec<u32>,
        },
        Message {
            flags: u8,
            lsn: u64,
            prefix: Vec<u8>,
            content: Vec<u8>,
        },
        StreamStart {
            xid: u32,
            first_segment: bool,
        },
        StreamStop,
        StreamCommit {
            xid: u32,
            flags: u8,
            commit_lsn: u64,
            end_lsn: u64,
            commit_time_micros: i64,
        },
        StreamAbort {
            xid: u32,
            subxid: u32,
        },
    }

    impl Msg {
        /// Whether pgoutput puts the xid after the tag inside a stream block.
        pub(crate) fn has_stream_xid(&self) -> bool {
            matches!(
                self,
                Msg::Relation(_)
                    | Msg::Type { .. }
                    | Msg::Insert { .. }
                    | Msg::Update { .. }
                    | Msg::Delete { .. }
                    | Msg::Truncate { .. }
                    | Msg::Message { .. }
            )
        }
    }

    /// Encodes `msg` as pgoutput writes it inside a stream block: the xid of its
    /// (sub)transaction right after the tag, for the kinds that carry one.
    pub(crate) fn encode_in_stream(xid: u32, msg: &Msg) -> Bytes {
        let plain = encode(msg);
        if !msg.has_stream_xid() {
            return plain;
        }
        let mut out = Vec::with_capacity(plain.len() + 4);
        out.put_u8(plain[0]);
        out.put_u32(xid);
        out.put_slice(&plain[1..]);
        Bytes::from(out)
    }

    fn put_cstr(out: &mut Vec<u8>, s: &[u8]) {
        assert!(!s.contains(&0), "C string must not contain NUL");
        out.put_slice(s);
        out.put_u8(0);
    }

    fn put_tuple(out: &mut Vec<u8>, tuple: &[Val]) {
        out.put_i16(i16::try_from(tuple.len()).unwrap());
        for v in tuple {
            match v {
                Val::Null => out.put_u8(b'n'),
                Val::Toast => out.put_u8(b'u'),
                Val::Text(b) | Val::Bin(b) => {
                    out.put_u8(if matches!(v, Val::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.put_i32(i32::try_from(b.len()).unwrap());
                    out.put_slice(b);
                }
            }
        }
    }

    /// Encodes exactly as pgoutput's proto v1 writer lays messages out.
    pub(crate) fn encode(msg: &Msg) -> Bytes {
        let mut out = Vec::new();
        match msg {
            Msg::Begin {
                final_lsn,
                commit_time_micros,
                xid,
            } => {
                out.put_u8(b'B');
                out.put_u64(*final_lsn);
                out.put_i64(*commit_time_micros);
                out.put_u32(*xid);
            }
            Msg::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time_micros,
            } => {
                out.put_u8(b'C');
                out.put_u8(*flags);
                out.put_u64(*commit_lsn);
                out.put_u64(*end_lsn);
                out.put_i64(*commit_time_micros);
            }
            Msg::Origin { commit_lsn, name } => {
                out.put_u8(b'O');
                out.put_u64(*commit_lsn);
                put_cstr(&mut out, name);
            }
            Msg::Relation(rel) => {
                out.put_u8(b'R');
                out.put_u32(rel.id);
                put_cstr(&mut out, rel.namespace.as_bytes());
                put_cstr(&mut out, rel.name.as_bytes());
                out.put_u8(rel.replica_identity);
                out.put_i16(i16::try_from(rel.columns.len()).unwrap());
                for c in &rel.columns {
                    out.put_u8(c.flags);
                    put_cstr(&mut out, c.name.as_bytes());
                    out.put_u32(c.type_oid);
                    out.put_i32(c.type_modifier);
                }
            }
            Msg::Type {
                id,
                namespace,
                name,
            } => {
                out.put_u8(b'Y');
                out.put_u32(*id);
                put_cstr(&mut out, namespace);
                put_cstr(&mut out, name);
            }
            Msg::Insert { relation_id, new } => {
                out.put_u8(b'I');
                out.put_u32(*relation_id);
                out.put_u8(b'N');
                put_tuple(&mut out, new);
            }
            Msg::Update {
                relation_id,
                old,
                new,
            } => {
                out.put_u8(b'U');
                out.put_u32(*relation_id);
                if let Some((marker, old)) = old {
                    out.put_u8(*marker);
                    put_tuple(&mut out, old);
                }
                out.put_u8(b'N');
                put_tuple(&mut out, new);
            }
            Msg::Delete {
                relation_id,
                old: (marker, old),
            } => {
                out.put_u8(b'D');
                out.put_u32(*relation_id);
                out.put_u8(*marker);
                put_tuple(&mut out, old);
            }
            Msg::Truncate {
                options,
                relation_ids,
            } => {
                out.put_u8(b'T');
                out.put_i32(i32::try_from(relation_ids.len()).unwrap());
                out.put_u8(*options);
                for id in relation_ids {
                    out.put_u32(*id);
                }
            }
            Msg::Message {
                flags,
                lsn,
                prefix,
                content,
            } => {
                out.put_u8(b'M');
                out.put_u8(*flags);
                out.put_u64(*lsn);
                put_cstr(&mut out, prefix);
                out.put_i32(i32::try_from(content.len()).unwrap());
                out.put_slice(content);
            }
            Msg::StreamStart { xid, first_segment } => {
                out.put_u8(b'S');
                out.put_u32(*xid);
                out.put_u8(u8::from(*first_segment));
            }
            Msg::StreamStop => out.put_u8(b'E'),
            Msg::StreamCommit {
                xid,
                flags,
                commit_lsn,
                end_lsn,
                commit_time_micros,
            } => {
                out.put_u8(b'c');
                out.put_u32(*xid);
                out.put_u8(*flags);
                out.put_u64(*commit_lsn);
                out.put_u64(*end_lsn);
                out.put_i64(*commit_time_micros);
            }
            Msg::StreamAbort { xid, subxid } => {
                out.put_u8(b'A');
                out.put_u32(*xid);
                out.put_u32(*subxid);
            }
        }
        Bytes::from(out)
    }

    fn owned_tuple(t: &TupleData) -> Vec<Val> {
        t.iter()
            .map(|v| match v {
                Value::Null => Val::Null,
                Value::UnchangedToast => Val::Toast,
                Value::Text(b) => Val::Text(b.to_vec()),
                Value::Binary(b) => Val::Bin(b.to_vec()),
            })
            .collect()
    }

    fn owned_old(old: &OldTuple) -> (u8, Vec<Val>) {
        match old {
            OldTuple::Key(t) => (b'K', owned_tuple(t)),
            OldTuple::Full(t) => (b'O', owned_tuple(t)),
        }
    }

    /// Converts a decoded message back into the owned model for comparison.
    pub(crate) fn model(msg: &LogicalMessage) -> Msg {
        match msg {
            LogicalMessage::Begin {
                final_lsn,
                commit_time_micros,
                xid,
            } => Msg::Begin {
                final_lsn: *final_lsn,
                commit_time_micros: *commit_time_micros,
                xid: *xid,
            },
            LogicalMessage::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time_micros,
            } => Msg::Commit {
                flags: *flags,
                commit_lsn: *commit_lsn,
                end_lsn: *end_lsn,
                commit_time_micros: *commit_time_micros,
            },
            LogicalMessage::Origin { commit_lsn, name } => Msg::Origin {
                commit_lsn: *commit_lsn,
                name: name.to_vec(),
            },
            LogicalMessage::Relation(rel) => Msg::Relation(rel.clone()),
            LogicalMessage::Type {
                id,
                namespace,
                name,
            } => Msg::Type {
                id: *id,
                namespace: namespace.to_vec(),
                name: name.to_vec(),
            },
            LogicalMessage::Insert { relation_id, new } => Msg::Insert {
                relation_id: *relation_id,
                new: owned_tuple(new),
            },
            LogicalMessage::Update {
                relation_id,
                old,
                new,
            } => Msg::Update {
                relation_id: *relation_id,
                old: old.as_ref().map(owned_old),
                new: owned_tuple(new),
            },
            LogicalMessage::Delete { relation_id, old } => Msg::Delete {
                relation_id: *relation_id,
                old: owned_old(old),
            },
            LogicalMessage::Truncate {
                options,
                relation_ids,
            } => Msg::Truncate {
                options: *options,
                relation_ids: relation_ids.clone(),
            },
            LogicalMessage::Message {
                flags,
                lsn,
                prefix,
                content,
            } => Msg::Message {
                flags: *flags,
                lsn: *lsn,
                prefix: prefix.to_vec(),
                content: content.to_vec(),
            },
            LogicalMessage::StreamStart { xid, first_segment } => Msg::StreamStart {
                xid: *xid,
                first_segment: *first_segment,
            },
            LogicalMessage::StreamStop => Msg::StreamStop,
            LogicalMessage::StreamCommit {
                xid,
                flags,
                commit_lsn,
                end_lsn,
                commit_time_micros,
            } => Msg::StreamCommit {
                xid: *xid,
                flags: *flags,
                commit_lsn: *commit_lsn,
                end_lsn: *end_lsn,
                commit_time_micros: *commit_time_micros,
            },
            LogicalMessage::StreamAbort { xid, subxid } => Msg::StreamAbort {
                xid: *xid,
                subxid: *subxid,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{encode, encode_in_stream, model, Msg, Val};
    use super::*;
    use bytes::BufMut;
    use proptest::prelude::*;

    fn round_trip(msg: Msg) -> LogicalMessage {
        let bytes = encode(&msg);
        let decoded = decode(&bytes).unwrap_or_else(|e| panic!("{msg:?} failed: {e}"));
        assert_eq!(model(&decoded), msg);
        decoded
    }

    fn decode_vec(v: Vec<u8>) -> Result<LogicalMessage, DecodeError> {
        decode(&Bytes::from(v))
    }

    fn sample_relation() -> Relation {
        Relation {
            id: 16_384,
            namespace: "public".into(),
            name: "product".into(),
            replica_identity: b'd',
            columns: vec![
                Column {
                    flags: 1,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                Column {
                    flags: 0,
                    name: "título".into(),
                    type_oid: 1043,
                    type_modifier: 259,
                },
            ],
        }
    }

    fn all_kinds() -> Vec<Val> {
        vec![
            Val::text("42"),
            Val::Null,
            Val::Toast,
            Val::Bin(vec![0, 159, 146, 150]),
            Val::text(""),
        ]
    }

    // ---- round trips -------------------------------------------------

    #[test]
    fn begin_round_trips() {
        let m = round_trip(Msg::Begin {
            final_lsn: 0x0000_0001_6B37_4D48,
            commit_time_micros: 756_000_000_123_456,
            xid: 734,
        });
        assert!(matches!(m, LogicalMessage::Begin { xid: 734, .. }));
    }

    #[test]
    fn commit_round_trips() {
        round_trip(Msg::Commit {
            flags: 0,
            commit_lsn: 0x1_6B37_4D48,
            end_lsn: 0x1_6B37_4D78,
            commit_time_micros: -1,
        });
    }

    #[test]
    fn origin_round_trips() {
        round_trip(Msg::Origin {
            commit_lsn: u64::MAX,
            name: b"pg_16385".to_vec(),
        });
    }

    #[test]
    fn relation_round_trips_and_indexes_columns() {
        let m = round_trip(Msg::Relation(sample_relation()));
        let LogicalMessage::Relation(rel) = m else {
            unreachable!()
        };
        assert_eq!(rel.column_index("id"), Some(0));
        assert_eq!(rel.column_index("título"), Some(1));
        assert_eq!(rel.column_index("missing"), None);
        assert!(rel.columns[0].is_key());
        assert!(!rel.columns[1].is_key());
    }

    #[test]
    fn relation_with_no_columns_and_pg_catalog_namespace_round_trips() {
        round_trip(Msg::Relation(Relation {
            id: 1,
            namespace: String::new(),
            name: "t".into(),
            replica_identity: b'n',
            columns: vec![],
        }));
    }

    #[test]
    fn type_round_trips() {
        round_trip(Msg::Type {
            id: 16_400,
            namespace: b"public".to_vec(),
            name: b"mood".to_vec(),
        });
    }

    #[test]
    fn insert_round_trips_every_value_kind() {
        let m = round_trip(Msg::Insert {
            relation_id: 16_384,
            new: all_kinds(),
        });
        let LogicalMessage::Insert { new, .. } = m else {
            unreachable!()
        };
        assert_eq!(new.len(), 5);
        assert!(!new.is_empty());
        assert_eq!(new.get(0), Some(Value::Text(b"42")));
        assert_eq!(new.get(0).unwrap().as_str(), Some("42"));
        assert_eq!(new.get(1), Some(Value::Null));
        assert_eq!(new.get(2), Some(Value::UnchangedToast));
        assert_eq!(new.get(3), Some(Value::Binary(&[0, 159, 146, 150])));
        assert_eq!(new.get(3).unwrap().as_str(), None, "binary is never a str");
        assert_eq!(new.get(4).unwrap().as_str(), Some(""));
        assert_eq!(new.get(5), None);
        assert_eq!(new.get(usize::MAX), None);
        assert_eq!(new.iter().len(), 5);
        assert_eq!((&new).into_iter().count(), 5);
    }

    #[test]
    fn insert_with_empty_tuple_round_trips() {
        let m = round_trip(Msg::Insert {
            relation_id: 7,
            new: vec![],
        });
        let LogicalMessage::Insert { new, .. } = m else {
            unreachable!()
        };
        assert!(new.is_empty());
        assert_eq!(new.get(0), None);
        assert_eq!(new.iter().next(), None);
    }

    #[test]
    fn update_round_trips_with_each_old_tuple_form() {
        round_trip(Msg::Update {
            relation_id: 1,
            old: None,
            new: all_kinds(),
        });
        let m = round_trip(Msg::Update {
            relation_id: 1,
            old: Some((b'K', vec![Val::text("7"), Val::Null])),
            new: vec![Val::text("8"), Val::Toast],
        });
        let LogicalMessage::Update { old: Some(old), .. } = m else {
            unreachable!()
        };
        assert!(matches!(old, OldTuple::Key(_)));
        assert_eq!(old.tuple().get(0).and_then(|v| v.as_str()), Some("7"));
        let m = round_trip(Msg::Update {
            relation_id: 1,
            old: Some((b'O', all_kinds())),
            new: all_kinds(),
        });
        assert!(matches!(
            m,
            LogicalMessage::Update {
                old: Some(OldTuple::Full(_)),
                ..
            }
        ));
    }

    #[test]
    fn delete_round_trips_with_key_and_full() {
        let m = round_trip(Msg::Delete {
            relation_id: 9,
            old: (b'K', vec![Val::text("1"), Val::Null]),
        });
        assert!(matches!(
            m,
            LogicalMessage::Delete {
                old: OldTuple::Key(_),
                ..
            }
        ));
        round_trip(Msg::Delete {
            relation_id: 9,
            old: (b'O', all_kinds()),
        });
    }

    #[test]
    fn truncate_round_trips() {
        round_trip(Msg::Truncate {
            options: 0,
            relation_ids: vec![],
        });
        round_trip(Msg::Truncate {
            options: 3,
            relation_ids: vec![16_384, 16_390, u32::MAX],
        });
    }

    #[test]
    fn message_round_trips() {
        round_trip(Msg::Message {
            flags: 1,
            lsn: 99,
            prefix: b"cdc-worker".to_vec(),
            content: vec![0, 1, 2, 255],
        });
        round_trip(Msg::Message {
            flags: 0,
            lsn: 0,
            prefix: vec![],
            content: vec![],
        });
    }

    #[test]
    fn values_borrow_from_the_input_buffer() {
        let bytes = encode(&Msg::Insert {
            relation_id: 1,
            new: vec![Val::text("hello")],
        });
        let LogicalMessage::Insert { new, .. } = decode(&bytes).unwrap() else {
            unreachable!()
        };
        let Some(Value::Text(v)) = new.get(0) else {
            unreachable!()
        };
        let input = bytes.as_ptr_range();
        assert!(input.contains(&v.as_ptr()), "value was copied, not sliced");
    }

    #[test]
    fn as_str_rejects_invalid_utf8_text() {
        assert_eq!(Value::Text(&[0xff, 0xfe]).as_str(), None);
        assert_eq!(Value::Null.as_str(), None);
        assert_eq!(Value::UnchangedToast.as_bytes(), None);
        assert_eq!(Value::Binary(b"x").as_bytes(), Some(&b"x"[..]));
    }

    #[test]
    fn tuple_debug_lists_values() {
        let bytes = encode(&Msg::Insert {
            relation_id: 1,
            new: vec![Val::text("a"), Val::Null],
        });
        let LogicalMessage::Insert { new, .. } = decode(&bytes).unwrap() else {
            unreachable!()
        };
        assert_eq!(format!("{new:?}"), "[Text([97]), Null]");
    }

    // ---- malformed input ---------------------------------------------

    #[test]
    fn empty_buffer_is_an_error() {
        assert_eq!(decode(&Bytes::new()), Err(DecodeError::Empty));
    }

    #[test]
    fn unknown_tag_is_reported() {
        let err = decode_vec(vec![b'Z', 0, 0]).unwrap_err();
        assert_eq!(err, DecodeError::UnknownTag { tag: b'Z' });
        assert_eq!(
            err.to_string(),
            "unknown pgoutput message tag 'Z' (0x5a) at byte 0"
        );
        let err = decode_vec(vec![0x00]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown pgoutput message tag 0x00 at byte 0"
        );
    }

    #[test]
    fn two_phase_messages_are_unsupported() {
        for tag in [b'p', b'b', b'P', b'K', b'r'] {
            let err = decode_vec(vec![tag, 0, 0, 0, 1, 1]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Unsupported { tag: t, .. } if t == tag),
                "{err:?}"
            );
        }
        let err = decode_vec(vec![b'P']).unwrap_err();
        assert!(err.to_string().contains("Prepare"), "{err}");
    }

    // ---- streaming (protocol 2) ----------------------------------------

    #[test]
    fn stream_messages_round_trip() {
        let m = round_trip(Msg::StreamStart {
            xid: 7_000_001,
            first_segment: true,
        });
        assert_eq!(
            m,
            LogicalMessage::StreamStart {
                xid: 7_000_001,
                first_segment: true
            }
        );
        round_trip(Msg::StreamStart {
            xid: 1,
            first_segment: false,
        });
        round_trip(Msg::StreamCommit {
            xid: 9,
            flags: 0,
            commit_lsn: 0x1_6B37_4D48,
            end_lsn: 0x1_6B37_4D78,
            commit_time_micros: 756_000_000_123_456,
        });
        round_trip(Msg::StreamAbort { xid: 9, subxid: 12 });
        assert_eq!(
            decode_in_stream(&encode(&Msg::StreamStop)),
            Ok((None, LogicalMessage::StreamStop))
        );
    }

    #[test]
    fn changes_inside_a_stream_block_carry_their_xid() {
        let insert = Msg::Insert {
            relation_id: 16_384,
            new: vec![Val::text("p1")],
        };
        let bytes = encode_in_stream(734, &insert);
        assert_eq!(
            &bytes[1..5],
            &734u32.to_be_bytes(),
            "xid right after the tag"
        );
        let (xid, m) = decode_in_stream(&bytes).unwrap();
        assert_eq!(xid, Some(734));
        assert_eq!(model(&m), insert);
        // Still zero-copy: the value is a slice of the input.
        let LogicalMessage::Insert { new, .. } = m else {
            unreachable!()
        };
        let Some(Value::Text(v)) = new.get(0) else {
            unreachable!()
        };
        assert!(bytes.as_ptr_range().contains(&v.as_ptr()));
        // The Origin that may follow Stream Start has no xid.
        let origin = Msg::Origin {
            commit_lsn: 5,
            name: b"pg_1".to_vec(),
        };
        assert_eq!(
            decode_in_stream(&encode(&origin)).map(|(x, m)| (x, model(&m))),
            Ok((None, origin))
        );
        // Read as if outside a block, the xid would be taken for the relation id.
        assert!(decode(&bytes).is_err() || model(&decode(&bytes).unwrap()) != insert);
    }

    #[test]
    fn misplaced_messages_are_rejected() {
        let commit = encode(&Msg::Commit {
            flags: 0,
            commit_lsn: 1,
            end_lsn: 2,
            commit_time_micros: 3,
        });
        let err = decode_in_stream(&commit).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Misplaced {
                tag: b'C',
                kind: "Commit",
                place: "inside a stream block",
            }
        );
        assert_eq!(
            err.to_string(),
            "pgoutput Commit message (tag 'C' (0x43)) inside a stream block"
        );
        for m in [
            Msg::Begin {
                final_lsn: 1,
                commit_time_micros: 2,
                xid: 3,
            },
            Msg::StreamStart {
                xid: 3,
                first_segment: true,
            },
            Msg::StreamCommit {
                xid: 3,
                flags: 0,
                commit_lsn: 1,
                end_lsn: 2,
                commit_time_micros: 3,
            },
            Msg::StreamAbort { xid: 3, subxid: 3 },
        ] {
            assert!(
                matches!(
                    decode_in_stream(&encode(&m)),
                    Err(DecodeError::Misplaced { .. })
                ),
                "{m:?}"
            );
        }
        assert!(matches!(
            decode(&encode(&Msg::StreamStop)),
            Err(DecodeError::Misplaced {
                tag: b'E',
                place: "outside a stream block",
                ..
            })
        ));
    }

    #[test]
    fn stream_start_flag_must_be_zero_or_one() {
        let err = decode_vec(vec![b'S', 0, 0, 0, 5, 2]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::InvalidFlag {
                field: "Stream Start first-segment flag",
                offset: 5,
                value: 2,
            }
        );
        assert_eq!(err.offset(), 5);
    }

    #[test]
    fn parallel_stream_abort_fields_are_trailing_bytes() {
        // proto_version 4 with streaming 'parallel' appends abort LSN and time (16 bytes);
        // we never ask for it, so it must not be taken for a protocol-2 abort.
        let mut v = encode(&Msg::StreamAbort { xid: 1, subxid: 2 }).to_vec();
        v.extend_from_slice(&[0; 16]);
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::TrailingBytes {
                message: "Stream Abort",
                offset: 9,
                count: 16,
            })
        );
    }

    #[test]
    fn truncated_stream_xid_is_reported() {
        assert_eq!(
            decode_in_stream(&Bytes::from_static(&[b'I', 0, 0])),
            Err(DecodeError::Truncated {
                field: "streamed change xid",
                offset: 1,
                needed: 4,
                available: 2,
            })
        );
    }

    #[test]
    fn truncated_fixed_field_reports_offset_and_sizes() {
        let mut v = encode(&Msg::Begin {
            final_lsn: 1,
            commit_time_micros: 2,
            xid: 3,
        })
        .to_vec();
        v.truncate(19); // tag + 8 + 8 + 2 of the 4 xid bytes
        let err = decode_vec(v).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                field: "Begin xid",
                offset: 17,
                needed: 4,
                available: 2,
            }
        );
        assert_eq!(err.offset(), 17);
        assert!(err.to_string().contains("at byte 17"), "{err}");
    }

    #[test]
    fn trailing_bytes_after_a_complete_message_are_rejected() {
        let mut v = encode(&Msg::Commit {
            flags: 0,
            commit_lsn: 1,
            end_lsn: 2,
            commit_time_micros: 3,
        })
        .to_vec();
        v.extend_from_slice(&[0xAA, 0xBB]);
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::TrailingBytes {
                message: "Commit",
                offset: 26,
                count: 2,
            })
        );
    }

    #[test]
    fn trailing_bytes_after_update_are_rejected() {
        let mut v = encode(&Msg::Update {
            relation_id: 1,
            old: None,
            new: vec![Val::text("x")],
        })
        .to_vec();
        v.push(b'n');
        assert!(matches!(
            decode_vec(v),
            Err(DecodeError::TrailingBytes {
                message: "Update",
                count: 1,
                ..
            })
        ));
    }

    #[test]
    fn unknown_column_kind_is_reported_with_column_index() {
        // I, relid, N, ncols=2, 'n', then bogus 'x'
        let mut v = vec![b'I', 0, 0, 0, 1, b'N'];
        v.put_i16(2);
        v.push(b'n');
        v.push(b'x');
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::UnknownColumnKind {
                offset: 9,
                column: 1,
                kind: b'x',
            })
        );
    }

    #[test]
    fn insert_without_new_marker_is_rejected() {
        let mut v = vec![b'I', 0, 0, 0, 1, b'K'];
        v.put_i16(0);
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::UnexpectedTupleMarker {
                offset: 5,
                found: b'K',
                expected: "'N'",
            })
        );
    }

    #[test]
    fn update_with_bad_markers_is_rejected() {
        let mut v = vec![b'U', 0, 0, 0, 1, b'X'];
        v.put_i16(0);
        assert!(matches!(
            decode_vec(v),
            Err(DecodeError::UnexpectedTupleMarker {
                offset: 5,
                found: b'X',
                ..
            })
        ));
        // Old key tuple followed by something other than 'N'.
        let mut v = vec![b'U', 0, 0, 0, 1, b'K'];
        v.put_i16(0);
        v.push(b'O');
        v.put_i16(0);
        assert!(matches!(
            decode_vec(v),
            Err(DecodeError::UnexpectedTupleMarker {
                offset: 8,
                found: b'O',
                ..
            })
        ));
    }

    #[test]
    fn delete_requires_key_or_full_marker() {
        let mut v = vec![b'D', 0, 0, 0, 1, b'N'];
        v.put_i16(0);
        assert!(matches!(
            decode_vec(v),
            Err(DecodeError::UnexpectedTupleMarker {
                found: b'N',
                expected: "'K' or 'O'",
                ..
            })
        ));
    }

    #[test]
    fn negative_column_count_is_rejected() {
        let mut v = vec![b'I', 0, 0, 0, 1, b'N'];
        v.put_i16(-1);
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::NegativeLength {
                field: "tuple column count",
                offset: 6,
                length: -1,
            })
        );
    }

    #[test]
    fn negative_value_length_is_rejected() {
        let mut v = vec![b'I', 0, 0, 0, 1, b'N'];
        v.put_i16(1);
        v.push(b't');
        v.put_i32(-1);
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::NegativeLength {
                field: "tuple column value",
                offset: 9,
                length: -1,
            })
        );
    }

    #[test]
    fn oversized_value_length_is_rejected() {
        let mut v = vec![b'I', 0, 0, 0, 1, b'N'];
        v.put_i16(1);
        v.push(b'b');
        v.put_i32(i32::MAX);
        v.extend_from_slice(b"abc");
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::LengthOutOfBounds {
                field: "tuple column value",
                offset: 9,
                length: i32::MAX as usize,
                available: 3,
            })
        );
    }

    #[test]
    fn huge_column_count_with_short_body_is_truncation_not_allocation() {
        let mut v = vec![b'I', 0, 0, 0, 1, b'N'];
        v.put_i16(i16::MAX);
        v.push(b'n');
        assert!(matches!(
            decode_vec(v),
            Err(DecodeError::Truncated {
                field: "tuple column kind",
                offset: 9,
                ..
            })
        ));
    }

    #[test]
    fn truncate_counts_are_bounded_before_allocating() {
        let mut v = vec![b'T'];
        v.put_i32(i32::MAX);
        v.push(0);
        v.put_u32(1);
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::LengthOutOfBounds {
                field: "Truncate relation ids",
                offset: 1,
                length: (i32::MAX as usize).saturating_mul(4),
                available: 4,
            })
        );
        let mut v = vec![b'T'];
        v.put_i32(-5);
        v.push(0);
        assert!(matches!(
            decode_vec(v),
            Err(DecodeError::NegativeLength { length: -5, .. })
        ));
    }

    #[test]
    fn relation_with_huge_column_count_fails_cleanly() {
        let mut v = vec![b'R', 0, 0, 0, 1];
        v.extend_from_slice(b"public\0t\0d");
        v.put_i16(i16::MAX);
        assert!(matches!(
            decode_vec(v),
            Err(DecodeError::Truncated {
                field: "Relation column flags",
                ..
            })
        ));
        let mut v = vec![b'R', 0, 0, 0, 1];
        v.extend_from_slice(b"public\0t\0d");
        v.put_i16(-3);
        assert!(matches!(
            decode_vec(v),
            Err(DecodeError::NegativeLength {
                field: "Relation column count",
                offset: 15,
                length: -3,
            })
        ));
    }

    #[test]
    fn non_utf8_relation_names_are_rejected() {
        let mut v = vec![b'R', 0, 0, 0, 1];
        v.extend_from_slice(b"public\0");
        v.extend_from_slice(b"bad\xff\0");
        v.push(b'd');
        v.put_i16(0);
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::InvalidUtf8 {
                field: "Relation name",
                offset: 12,
            })
        );

        let mut v = vec![b'R', 0, 0, 0, 1];
        v.extend_from_slice(b"\0t\0d");
        v.put_i16(1);
        v.push(0);
        v.extend_from_slice(b"\xc3\0");
        v.put_u32(23);
        v.put_i32(-1);
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::InvalidUtf8 {
                field: "Relation column name",
                offset: 12,
            })
        );
    }

    #[test]
    fn missing_nul_terminator_is_rejected() {
        let mut v = vec![b'O'];
        v.put_u64(5);
        v.extend_from_slice(b"origin-without-terminator");
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::UnterminatedString {
                field: "Origin name",
                offset: 9,
            })
        );
        let v = vec![b'Y', 0, 0, 0, 1, b'p', 0, b'q'];
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::UnterminatedString {
                field: "Type name",
                offset: 7,
            })
        );
    }

    #[test]
    fn message_content_length_is_checked() {
        let mut v = vec![b'M', 1];
        v.put_u64(1);
        v.extend_from_slice(b"p\0");
        v.put_i32(10);
        v.extend_from_slice(b"short");
        assert_eq!(
            decode_vec(v),
            Err(DecodeError::LengthOutOfBounds {
                field: "Message content",
                offset: 12,
                length: 10,
                available: 5,
            })
        );
    }

    // ---- properties --------------------------------------------------

    fn bytes_no_nul(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(1u8..=255, 0..=max)
    }

    fn val() -> impl Strategy<Value = Val> {
        prop_oneof![
            Just(Val::Null),
            Just(Val::Toast),
            prop::collection::vec(any::<u8>(), 0..24).prop_map(Val::Text),
            prop::collection::vec(any::<u8>(), 0..24).prop_map(Val::Bin),
        ]
    }

    fn tuple() -> impl Strategy<Value = Vec<Val>> {
        prop::collection::vec(val(), 0..8)
    }

    fn old_tuple() -> impl Strategy<Value = (u8, Vec<Val>)> {
        (prop_oneof![Just(b'K'), Just(b'O')], tuple())
    }

    fn column() -> impl Strategy<Value = Column> {
        (any::<u8>(), "[^\u{0}]{0,12}", any::<u32>(), any::<i32>()).prop_map(
            |(flags, name, type_oid, type_modifier)| Column {
                flags,
                name,
                type_oid,
                type_modifier,
            },
        )
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(a, b, c)| Msg::Begin {
                final_lsn: a,
                commit_time_micros: b,
                xid: c,
            }),
            (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(f, a, b, t)| {
                Msg::Commit {
                    flags: f,
                    commit_lsn: a,
                    end_lsn: b,
                    commit_time_micros: t,
                }
            }),
            (any::<u64>(), bytes_no_nul(16))
                .prop_map(|(commit_lsn, name)| Msg::Origin { commit_lsn, name }),
            (
                any::<u32>(),
                "[^\u{0}]{0,12}",
                "[^\u{0}]{0,12}",
                any::<u8>(),
                prop::collection::vec(column(), 0..6),
            )
                .prop_map(|(id, namespace, name, replica_identity, columns)| {
                    Msg::Relation(Relation {
                        id,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    })
                }),
            (any::<u32>(), bytes_no_nul(12), bytes_no_nul(12)).prop_map(|(id, namespace, name)| {
                Msg::Type {
                    id,
                    namespace,
                    name,
                }
            }),
            (any::<u32>(), tuple()).prop_map(|(relation_id, new)| Msg::Insert { relation_id, new }),
            (any::<u32>(), prop::option::of(old_tuple()), tuple()).prop_map(
                |(relation_id, old, new)| Msg::Update {
                    relation_id,
                    old,
                    new
                }
            ),
            (any::<u32>(), old_tuple())
                .prop_map(|(relation_id, old)| Msg::Delete { relation_id, old }),
            (any::<u8>(), prop::collection::vec(any::<u32>(), 0..8)).prop_map(
                |(options, relation_ids)| Msg::Truncate {
                    options,
                    relation_ids
                }
            ),
            (
                any::<u8>(),
                any::<u64>(),
                bytes_no_nul(12),
                prop::collection::vec(any::<u8>(), 0..32),
            )
                .prop_map(|(flags, lsn, prefix, content)| Msg::Message {
                    flags,
                    lsn,
                    prefix,
                    content,
                }),
            (any::<u32>(), any::<bool>())
                .prop_map(|(xid, first_segment)| Msg::StreamStart { xid, first_segment }),
            (
                any::<u32>(),
                any::<u8>(),
                any::<u64>(),
                any::<u64>(),
                any::<i64>()
            )
                .prop_map(|(xid, flags, commit_lsn, end_lsn, commit_time_micros)| {
                    Msg::StreamCommit {
                        xid,
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_time_micros,
                    }
                }),
            (any::<u32>(), any::<u32>()).prop_map(|(xid, subxid)| Msg::StreamAbort { xid, subxid }),
        ]
    }

    /// What may arrive inside a stream block: a message that carries an xid there, the
    /// Origin after Stream Start, or Stream Stop.
    fn in_stream_msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            msg().prop_filter("carries a stream xid", Msg::has_stream_xid),
            Just(Msg::StreamStop),
            (any::<u64>(), bytes_no_nul(16))
                .prop_map(|(commit_lsn, name)| Msg::Origin { commit_lsn, name }),
        ]
    }

    /// Arbitrary bytes, but biased to start with a real tag so the fuzzing
    /// reaches the per-message parsers instead of stopping at UnknownTag.
    fn tagged_garbage() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(b"BCORYIUDTMSEcApZ".to_vec()),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(tag, mut rest)| {
                rest.insert(0, tag);
                rest
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(v in prop::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode_vec(v);
        }

        #[test]
        fn tagged_garbage_never_panics_and_decoded_tuples_are_walkable(v in tagged_garbage()) {
            let v = Bytes::from(v);
            if let Ok(m) = decode(&v) {
                // Whatever decoded must be fully readable without panicking.
                let _ = model(&m);
            }
            if let Ok((_, m)) = decode_in_stream(&v) {
                let _ = model(&m);
            }
        }

        #[test]
        fn messages_inside_a_stream_block_round_trip(m in in_stream_msg(), xid in any::<u32>()) {
            let bytes = encode_in_stream(xid, &m);
            let (got_xid, decoded) = decode_in_stream(&bytes).map_err(|e| {
                TestCaseError::fail(format!("{m:?}: {e}"))
            })?;
            prop_assert_eq!(got_xid, m.has_stream_xid().then_some(xid));
            prop_assert_eq!(model(&decoded), m);
            for cut in 0..bytes.len() {
                prop_assert!(decode_in_stream(&bytes.slice(..cut)).is_err(), "prefix {}", cut);
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            let trailing = matches!(
                decode_in_stream(&Bytes::from(longer)),
                Err(DecodeError::TrailingBytes { .. })
            );
            prop_assert!(trailing);
        }

        #[test]
        fn valid_messages_round_trip(m in msg()) {
            let bytes = encode(&m);
            let decoded = decode(&bytes);
            prop_assert!(decoded.is_ok(), "{:?}", decoded);
            prop_assert_eq!(model(&decoded.unwrap()), m);
        }

        #[test]
        fn every_strict_prefix_is_an_error(m in msg()) {
            let bytes = encode(&m);
            for cut in 0..bytes.len() {
                let r = decode(&bytes.slice(..cut));
                prop_assert!(r.is_err(), "prefix of len {} decoded: {:?}", cut, r);
            }
        }

        #[test]
        fn any_appended_bytes_are_trailing_garbage(
            m in msg(),
            extra in prop::collection::vec(any::<u8>(), 1..8),
        ) {
            let mut v = encode(&m).to_vec();
            let end = v.len();
            v.extend_from_slice(&extra);
            match decode_vec(v) {
                Err(DecodeError::TrailingBytes { offset, count, .. }) => {
                    prop_assert_eq!(offset, end);
                    prop_assert_eq!(count, extra.len());
                }
                other => prop_assert!(false, "expected TrailingBytes, got {:?}", other),
            }
        }
    }
}
