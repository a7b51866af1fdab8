//! The fast path for spans: OTLP protobuf bytes straight into the span batch,
//! without materialising prost messages (prost decoding allocated every key,
//! value and attribute list, and was the largest item of the ingest profile).
//!
//! It reads `ExportTraceServiceRequest` / `TracesData` (the same wire format) and
//! produces exactly what [`super::spans::to_arrow`] produces from the prost
//! messages. Anything it does not handle (a malformed message, groups, a known
//! field with an unexpected wire type) makes it give up with [`Unsupported`]; the
//! caller then decodes with prost, which either succeeds or reports the error.
//! Attribute values other than plain strings, integers, booleans and doubles are
//! rendered by decoding just that `KeyValue` with prost.
//!
//! One difference, on purpose: only what becomes a column is read and
//! UTF-8-checked. Attributes that are not columns, `trace_state`, events, links and
//! the instrumentation scope are skipped unread, so invalid UTF-8 there does not
//! cost the whole request (prost refuses the request; this path keeps its spans).

use std::borrow::Cow;

use arrow::error::ArrowError;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

use super::Decoded;
use super::resource::{ResourceIdentity, any_value_to_string, find_i64};
use super::spans::{HTTP_STATUS_ATTRIBUTES, STRING_ATTRIBUTES, SpanBatchBuilder, SpanRow};

/// The fast path cannot decode this input (the prost path decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported;

pub(super) const VARINT: u8 = 0;
pub(super) const FIXED64: u8 = 1;
pub(super) const LEN: u8 = 2;
pub(super) const FIXED32: u8 = 5;

pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(super) fn more(&self) -> bool {
        self.pos < self.buf.len()
    }

    pub(super) fn varint(&mut self) -> Result<u64, Unsupported> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or(Unsupported)?;
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err(Unsupported);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(Unsupported)
    }

    /// (field number, wire type)
    pub(super) fn key(&mut self) -> Result<(u64, u8), Unsupported> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) || key >> 3 == 0 {
            return Err(Unsupported);
        }
        Ok((key >> 3, (key & 7) as u8))
    }

    pub(super) fn bytes(&mut self) -> Result<&'a [u8], Unsupported> {
        let len = usize::try_from(self.varint()?).map_err(|_| Unsupported)?;
        let end = self.pos.checked_add(len).ok_or(Unsupported)?;
        let out = self.buf.get(self.pos..end).ok_or(Unsupported)?;
        self.pos = end;
        Ok(out)
    }

    pub(super) fn str(&mut self) -> Result<&'a str, Unsupported> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Unsupported)
    }

    pub(super) fn fixed64(&mut self) -> Result<u64, Unsupported> {
        let end = self.pos.checked_add(8).ok_or(Unsupported)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Unsupported)?;
        self.pos = end;
        let mut out = [0u8; 8];
        out.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(out))
    }

    pub(super) fn skip(&mut self, wire_type: u8) -> Result<(), Unsupported> {
        match wire_type {
            VARINT => self.varint().map(|_| ()),
            FIXED64 => self.fixed64().map(|_| ()),
            LEN => self.bytes().map(|_| ()),
            FIXED32 => {
                let end = self.pos.checked_add(4).ok_or(Unsupported)?;
                if end > self.buf.len() {
                    return Err(Unsupported);
                }
                self.pos = end;
                Ok(())
            }
            // Groups (3, 4) and invalid wire types: prost decides.
            _ => Err(Unsupported),
        }
    }
}

pub(super) fn expect(wire_type: u8, wanted: u8) -> Result<(), Unsupported> {
    if wire_type == wanted {
        Ok(())
    } else {
        Err(Unsupported)
    }
}

/// An attribute value, when simple enough to read without prost.
#[derive(Debug, Clone, Copy)]
pub(super) enum Simple<'a> {
    /// No value at all.
    None,
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Double(f64),
}

/// One `KeyValue`: its key and value bytes, read lazily: only the few attributes
/// that become columns are validated and parsed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attribute<'a> {
    key: &'a [u8],
    /// The last `value` (AnyValue) field, and how many there were.
    value: Option<&'a [u8]>,
    values: u32,
    raw: &'a [u8],
}

impl<'a> Attribute<'a> {
    /// The value, when simple; `Err` when prost must decide.
    fn simple(&self) -> Result<Simple<'a>, Unsupported> {
        match (self.values, self.value) {
            (0, _) | (_, None) => Ok(Simple::None),
            (1, Some(bytes)) => any_value(bytes)?.ok_or(Unsupported),
            _ => Err(Unsupported),
        }
    }

    /// The value as prost decodes it (repeated or nested values, bytes, invalid text).
    fn decoded(&self) -> Option<KeyValue> {
        KeyValue::decode(self.raw).ok()
    }
}

pub(super) fn any_value(bytes: &[u8]) -> Result<Option<Simple<'_>>, Unsupported> {
    let mut reader = Reader::new(bytes);
    let mut value = Simple::None;
    let mut fields = 0;
    while reader.more() {
        let (field, wire_type) = reader.key()?;
        fields += 1;
        value = match (field, wire_type) {
            (1, LEN) => Simple::Str(reader.str()?),
            (2, VARINT) => Simple::Bool(reader.varint()? != 0),
            (3, VARINT) => Simple::Int(reader.varint()? as i64),
            (4, FIXED64) => Simple::Double(f64::from_bits(reader.fixed64()?)),
            _ => {
                reader.skip(wire_type)?;
                return Ok(None);
            }
        };
    }
    // A repeated value field is merged by prost: leave that to prost.
    Ok((fields <= 1).then_some(value))
}

fn attribute(raw: &[u8]) -> Result<Attribute<'_>, Unsupported> {
    let mut reader = Reader::new(raw);
    let mut attribute = Attribute {
        key: &[],
        value: None,
        values: 0,
        raw,
    };
    while reader.more() {
        match reader.key()? {
            (1, wire_type) => {
                expect(wire_type, LEN)?;
                attribute.key = reader.bytes()?;
            }
            (2, wire_type) => {
                expect(wire_type, LEN)?;
                attribute.value = Some(reader.bytes()?);
                attribute.values += 1;
            }
            (_, wire_type) => reader.skip(wire_type)?,
        }
    }
    Ok(attribute)
}

/// `find_str` over wire attributes: the first attribute named `key`, rendered.
fn find_str<'a>(attributes: &[Attribute<'a>], key: &str) -> Option<Cow<'a, str>> {
    let attribute = attributes.iter().find(|a| a.key == key.as_bytes())?;
    match attribute.simple() {
        Ok(Simple::None) => None,
        Ok(Simple::Str(s)) => Some(Cow::Borrowed(s)),
        Ok(Simple::Int(i)) => Some(Cow::Owned(i.to_string())),
        Ok(Simple::Bool(b)) => Some(Cow::Owned(b.to_string())),
        Ok(Simple::Double(d)) => Some(Cow::Owned(d.to_string())),
        Err(Unsupported) => attribute
            .decoded()?
            .value
            .as_ref()
            .and_then(any_value_to_string)
            .map(Cow::Owned),
    }
}

/// `find_i64` over wire attributes.
fn find_int(attributes: &[Attribute<'_>], key: &str) -> Option<i64> {
    let attribute = attributes.iter().find(|a| a.key == key.as_bytes())?;
    match attribute.simple() {
        Ok(Simple::Int(i)) => Some(i),
        Ok(Simple::Double(d)) if d.is_finite() => Some(d as i64),
        Ok(Simple::Str(s)) => s.trim().parse().ok(),
        Ok(_) => None,
        Err(Unsupported) => find_i64(std::slice::from_ref(&attribute.decoded()?), key),
    }
}

/// Bit `n` is set when some column's attribute name is `n` bytes long. A span's
/// attributes are mostly not columns: testing the key's length against this mask
/// keeps them out of the dozen name comparisons each column lookup makes.
const COLUMN_KEY_LENGTHS: u64 = {
    let mut mask = 0u64;
    let mut i = 0;
    while i < HTTP_STATUS_ATTRIBUTES.len() {
        mask |= 1 << HTTP_STATUS_ATTRIBUTES[i].len();
        i += 1;
    }
    let mut column = 0;
    while column < STRING_ATTRIBUTES.len() {
        let keys = STRING_ATTRIBUTES[column];
        let mut k = 0;
        while k < keys.len() {
            mask |= 1 << keys[k].len();
            k += 1;
        }
        column += 1;
    }
    mask
};

/// Whether an attribute named `key` may feed a column (see [`COLUMN_KEY_LENGTHS`]).
fn may_be_column(key: &[u8]) -> bool {
    key.len() < 64 && COLUMN_KEY_LENGTHS >> key.len() & 1 == 1
}

/// Decodes a traces request into the span batch, or gives up.
pub fn decode(body: &[u8]) -> Result<Result<Decoded, ArrowError>, Unsupported> {
    // Size the builders by a cheap estimate: about 200 bytes per span.
    let mut builder = SpanBatchBuilder::with_capacity((body.len() / 200).clamp(16, 1 << 16));
    let mut attributes: Vec<Attribute<'_>> = Vec::new();
    let mut resource_attributes: Vec<Attribute<'_>> = Vec::new();
    let mut reader = Reader::new(body);
    while reader.more() {
        match reader.key()? {
            (1, wire_type) => {
                expect(wire_type, LEN)?;
                let resource_spans = reader.bytes()?;
                if let Err(error) = self::resource_spans(
                    resource_spans,
                    &mut builder,
                    &mut resource_attributes,
                    &mut attributes,
                )? {
                    return Ok(Err(error));
                }
            }
            (_, wire_type) => reader.skip(wire_type)?,
        }
    }
    Ok(builder.finish())
}

fn resource_spans<'a>(
    bytes: &'a [u8],
    builder: &mut SpanBatchBuilder,
    resource_attributes: &mut Vec<Attribute<'a>>,
    attributes: &mut Vec<Attribute<'a>>,
) -> Result<Result<(), ArrowError>, Unsupported> {
    resource_items(bytes, resource_attributes, |span, identity| {
        self::span(span, identity, builder, attributes)
    })
}

/// Reads one `ResourceSpans` or `ResourceLogs` (the same layout: 1 resource,
/// 2 scope items, 3 schema url; each scope item: 1 scope, 2 items, 3 schema url)
/// and hands each item, with the resource's identity, to `item`.
pub(super) fn resource_items<'a>(
    bytes: &'a [u8],
    resource_attributes: &mut Vec<Attribute<'a>>,
    mut item: impl FnMut(&'a [u8], &ResourceIdentity) -> Result<Result<(), ArrowError>, Unsupported>,
) -> Result<Result<(), ArrowError>, Unsupported> {
    // The resource may follow the items on the wire: read it first.
    resource_attributes.clear();
    let mut reader = Reader::new(bytes);
    while reader.more() {
        match reader.key()? {
            (1, wire_type) => {
                expect(wire_type, LEN)?;
                let mut resource = Reader::new(reader.bytes()?);
                while resource.more() {
                    match resource.key()? {
                        (1, wire_type) => {
                            expect(wire_type, LEN)?;
                            resource_attributes.push(attribute(resource.bytes()?)?);
                        }
                        (_, wire_type) => resource.skip(wire_type)?,
                    }
                }
            }
            (2, wire_type) => {
                expect(wire_type, LEN)?;
                reader.bytes()?;
            }
            (3, wire_type) => {
                expect(wire_type, LEN)?;
                reader.str()?;
            }
            (_, wire_type) => reader.skip(wire_type)?,
        }
    }
    let identity =
        ResourceIdentity::resolve(|key| find_str(resource_attributes, key).map(Cow::into_owned));
    let mut reader = Reader::new(bytes);
    while reader.more() {
        let (field, wire_type) = reader.key()?;
        if field != 2 {
            reader.skip(wire_type)?;
            continue;
        }
        let mut scope = Reader::new(reader.bytes()?);
        while scope.more() {
            match scope.key()? {
                (2, wire_type) => {
                    expect(wire_type, LEN)?;
                    if let Err(error) = item(scope.bytes()?, &identity)? {
                        return Ok(Err(error));
                    }
                }
                (3, wire_type) => {
                    expect(wire_type, LEN)?;
                    scope.str()?;
                }
                (_, wire_type) => scope.skip(wire_type)?,
            }
        }
    }
    Ok(Ok(()))
}

fn span<'a>(
    bytes: &'a [u8],
    identity: &ResourceIdentity,
    builder: &mut SpanBatchBuilder,
    attributes: &mut Vec<Attribute<'a>>,
) -> Result<Result<(), ArrowError>, Unsupported> {
    attributes.clear();
    let mut reader = Reader::new(bytes);
    let (mut trace_id, mut span_id, mut parent): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let (mut name, mut kind, mut start, mut end, mut status_code) = ("", 0i32, 0u64, 0u64, 0i32);
    while reader.more() {
        let (field, wire_type) = reader.key()?;
        match field {
            1 | 2 | 4 => {
                expect(wire_type, LEN)?;
                let value = reader.bytes()?;
                match field {
                    1 => trace_id = value,
                    2 => span_id = value,
                    _ => parent = value,
                }
            }
            3 => {
                expect(wire_type, LEN)?;
                reader.bytes()?;
            }
            5 => {
                expect(wire_type, LEN)?;
                name = reader.str()?;
            }
            6 => {
                expect(wire_type, VARINT)?;
                kind = reader.varint()? as i32;
            }
            7 | 8 => {
                expect(wire_type, FIXED64)?;
                let value = reader.fixed64()?;
                if field == 7 {
                    start = value;
                } else {
                    end = value;
                }
            }
            9 => {
                expect(wire_type, LEN)?;
                let attribute = attribute(reader.bytes()?)?;
                if may_be_column(attribute.key) {
                    attributes.push(attribute);
                }
            }
            15 => {
                expect(wire_type, LEN)?;
                let mut status = Reader::new(reader.bytes()?);
                while status.more() {
                    match status.key()? {
                        (2, wire_type) => {
                            expect(wire_type, LEN)?;
                            status.str()?;
                        }
                        (3, wire_type) => {
                            expect(wire_type, VARINT)?;
                            status_code = status.varint()? as i32;
                        }
                        (_, wire_type) => status.skip(wire_type)?,
                    }
                }
            }
            // dropped counts, events, links, flags and unknown fields.
            _ => reader.skip(wire_type)?,
        }
    }
    let attrs = &attributes[..];
    let row = SpanRow {
        trace_id,
        span_id,
        parent_span_id: parent,
        name,
        kind,
        start,
        end,
        status_code,
        http_status: HTTP_STATUS_ATTRIBUTES
            .iter()
            .find_map(|key| find_int(attrs, key)),
        strings: STRING_ATTRIBUTES.map(|keys| {
            keys.iter()
                .find_map(|key| find_str(attrs, key).filter(|v| !v.is_empty()))
        }),
    };
    Ok(builder.append(identity, row))
}

#[cfg(test)]
#[path = "spans_wire_tests.rs"]
mod tests;
