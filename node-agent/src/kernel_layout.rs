//! The running kernel's struct offsets the eBPF programs read through,
//! resolved from its BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF gets no CO-RE relocations (rustc and bpf-linker emit none), so
//! the agent does what libbpf would: it looks each field up by name in the
//! kernel's type information, checks its size, and hands the offsets to the
//! programs as a read-only array (node-ebpf-common's `layout`). The verifier
//! then checks every load against the same types, so a wrong offset is a
//! refused program, never a wrong number.
//!
//! The parser reads only what this needs (type kinds, struct and union
//! members, sizes, names). aya parses BTF too, but keeps its type accessors
//! private; btf-rs would do, but is LGPL and this crate is Apache-2.0.

use std::path::Path;

use node_ebpf_common::layout;

/// Where the kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Every offset the programs need: the index into `layout`, the struct,
/// the path of member names to the field (anonymous unions and structs are
/// searched through; an array member is entered at its first element) and
/// the field's size in bytes.
pub const FIELDS: [(usize, &str, &str, usize); layout::COUNT] = [
    (layout::SKC_FAMILY, "sock", "__sk_common.skc_family", 2),
    (layout::SKC_NUM, "sock", "__sk_common.skc_num", 2),
    (layout::SKC_DPORT, "sock", "__sk_common.skc_dport", 2),
    (layout::SKC_RCV_SADDR, "sock", "__sk_common.skc_rcv_saddr", 4),
    (layout::SKC_DADDR, "sock", "__sk_common.skc_daddr", 4),
    (layout::SKC_V6_RCV_SADDR, "sock", "__sk_common.skc_v6_rcv_saddr", 16),
    (layout::SKC_V6_DADDR, "sock", "__sk_common.skc_v6_daddr", 16),
    (layout::SKC_NET, "sock", "__sk_common.skc_net.net", 8),
    (layout::NET_COOKIE, "net", "net_cookie", 8),
    (layout::SK_CGROUP, "sock", "sk_cgrp_data.cgroup", 8),
    (layout::CGROUP_PARENT, "cgroup", "self.parent", 8),
    (layout::CSS_CGROUP, "cgroup_subsys_state", "cgroup", 8),
    (layout::CGROUP_KN, "cgroup", "kn", 8),
    (layout::KN_ID, "kernfs_node", "id", 8),
    (layout::TCP_TOS, "tcp_sock", "inet_conn.icsk_inet.tos", 1),
    (layout::TCP_PINET6, "tcp_sock", "inet_conn.icsk_inet.pinet6", 8),
    (layout::IPV6_TCLASS, "ipv6_pinfo", "tclass", 1),
    (layout::TCP_BYTES_ACKED, "tcp_sock", "bytes_acked", 8),
    (layout::TCP_BYTES_RECEIVED, "tcp_sock", "bytes_received", 8),
    (layout::TCP_SEGS_OUT, "tcp_sock", "segs_out", 4),
    (layout::TCP_SEGS_IN, "tcp_sock", "segs_in", 4),
    (layout::TCP_TOTAL_RETRANS, "tcp_sock", "total_retrans", 4),
    (layout::TCP_SRTT_US, "tcp_sock", "srtt_us", 4),
    (layout::TCP_RTT_MIN, "tcp_sock", "rtt_min.s.v", 4),
    (layout::SKC_STATE, "sock", "__sk_common.skc_state", 1),
    (layout::SKC_COOKIE, "sock", "__sk_common.skc_cookie", 8),
    (layout::SK_PROTOCOL, "sock", "sk_protocol", 2),
    (layout::TCP_CLOCK_CACHE, "tcp_sock", "tcp_clock_cache", 8),
];

/// Why the offsets could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The BTF file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not BTF this parser understands.
    #[error("{path} is not valid BTF: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A field the programs read is missing or has another size.
    #[error("kernel BTF: {0} (flowmesh-agent reads this field and does not support this kernel's layout)")]
    Field(String),
}

const BTF_MAGIC: u16 = 0xeb9f;

/// BTF kinds (include/uapi/linux/btf.h) this parser tells apart.
mod btf_kind {
    pub(super) const INT: u32 = 1;
    pub(super) const PTR: u32 = 2;
    pub(super) const ARRAY: u32 = 3;
    pub(super) const STRUCT: u32 = 4;
    pub(super) const UNION: u32 = 5;
    pub(super) const ENUM: u32 = 6;
    pub(super) const TYPEDEF: u32 = 8;
    pub(super) const VOLATILE: u32 = 9;
    pub(super) const CONST: u32 = 10;
    pub(super) const RESTRICT: u32 = 11;
    pub(super) const FUNC_PROTO: u32 = 13;
    pub(super) const VAR: u32 = 14;
    pub(super) const DATASEC: u32 = 15;
    pub(super) const DECL_TAG: u32 = 17;
    pub(super) const TYPE_TAG: u32 = 18;
    pub(super) const ENUM64: u32 = 19;
}

/// A struct or union member.
#[derive(Debug, Clone, Copy)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
    /// A bitfield's width in bits; 0 for a whole member.
    bits: u32,
}

/// One BTF type, as far as offsets and sizes go.
#[derive(Debug, Clone)]
enum Type {
    /// Void (id 0), functions, variables and anything else without a size.
    Other,
    /// An integer, enum or float of this many bytes.
    Sized(usize),
    Pointer,
    Array {
        element: u32,
        count: u32,
    },
    Composite {
        name: u32,
        size: usize,
        members: Vec<Member>,
    },
    /// A typedef or qualifier of another type.
    Alias(u32),
}

/// The kernel's types, indexed by BTF id.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_kernel() -> Result<Btf, LayoutError> {
        Btf::from_file(Path::new(VMLINUX_BTF))
    }

    /// Reads BTF from `path`.
    pub fn from_file(path: &Path) -> Result<Btf, LayoutError> {
        let bytes = std::fs::read(path).map_err(|source| LayoutError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(&bytes).map_err(|message| LayoutError::Format {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses BTF in the host's byte order (as the kernel publishes it).
    pub fn parse(bytes: &[u8]) -> Result<Btf, String> {
        let short = || "truncated".to_string();
        if u16_at(bytes, 0).ok_or_else(short)? != BTF_MAGIC {
            return Err("bad magic (not BTF, or another byte order)".into());
        }
        let header_len = u32_at(bytes, 4).ok_or_else(short)? as usize;
        let type_off = u32_at(bytes, 8).ok_or_else(short)? as usize;
        let type_len = u32_at(bytes, 12).ok_or_else(short)? as usize;
        let str_off = u32_at(bytes, 16).ok_or_else(short)? as usize;
        let str_len = u32_at(bytes, 20).ok_or_else(short)? as usize;
        let types_bytes = bytes
            .get(header_len + type_off..header_len + type_off + type_len)
            .ok_or_else(short)?;
        let strings = bytes
            .get(header_len + str_off..header_len + str_off + str_len)
            .ok_or_else(short)?
            .to_vec();
        let mut types = vec![Type::Other];
        let mut at = 0;
        while at < types_bytes.len() {
            let word = |i: usize| u32_at(types_bytes, at + i * 4).ok_or_else(short);
            let (name, info, size_or_type) = (word(0)?, word(1)?, word(2)?);
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let bitfield_offsets = info >> 31 == 1;
            at += 12;
            let (ty, extra) = match kind {
                btf_kind::INT => (Type::Sized(size_or_type as usize), 4),
                btf_kind::PTR => (Type::Pointer, 0),
                btf_kind::ARRAY => {
                    let element = u32_at(types_bytes, at).ok_or_else(short)?;
                    let count = u32_at(types_bytes, at + 8).ok_or_else(short)?;
                    (Type::Array { element, count }, 12)
                }
                btf_kind::STRUCT | btf_kind::UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(types_bytes, m + 8).ok_or_else(short)?;
                        members.push(Member {
                            name: u32_at(types_bytes, m).ok_or_else(short)?,
                            type_id: u32_at(types_bytes, m + 4).ok_or_else(short)?,
                            // With the kind flag, the top 8 bits are a
                            // bitfield's size.
                            bit_offset: if bitfield_offsets { offset & 0xff_ffff } else { offset },
                            bits: if bitfield_offsets { offset >> 24 } else { 0 },
                        });
                    }
                    let size = size_or_type as usize;
                    (Type::Composite { name, size, members }, vlen * 12)
                }
                btf_kind::ENUM => (Type::Sized(size_or_type as usize), vlen * 8),
                btf_kind::ENUM64 => (Type::Sized(size_or_type as usize), vlen * 12),
                btf_kind::TYPEDEF | btf_kind::VOLATILE | btf_kind::CONST | btf_kind::RESTRICT | btf_kind::TYPE_TAG => {
                    (Type::Alias(size_or_type), 0)
                }
                btf_kind::FUNC_PROTO => (Type::Other, vlen * 8),
                btf_kind::VAR | btf_kind::DECL_TAG => (Type::Other, 4),
                btf_kind::DATASEC => (Type::Other, vlen * 12),
                // FWD, FUNC, FLOAT: nothing after the common part (a float's
                // size is never needed here).
                7 | 12 | 16 => (Type::Other, 0),
                other => return Err(format!("unknown type kind {other}")),
            };
            types.push(ty);
            at += extra;
        }
        Ok(Btf { types, strings })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// The type behind typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> (u32, &Type) {
        // Bounded: a malformed file could loop.
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias(next)) => id = *next,
                Some(ty) => return (id, ty),
                None => return (id, &Type::Other),
            }
        }
        (id, &Type::Other)
    }

    fn size_of(&self, id: u32) -> Option<usize> {
        match self.resolve(id).1 {
            Type::Sized(size) => Some(*size),
            Type::Pointer => Some(8),
            Type::Composite { size, .. } => Some(*size),
            Type::Array { element, count } => Some(self.size_of(*element)? * *count as usize),
            Type::Alias(_) | Type::Other => None,
        }
    }

    /// The struct named `name` (the first with members, not a forward
    /// declaration).
    fn find_struct(&self, name: &str) -> Option<u32> {
        self.types.iter().position(|t| {
            matches!(t, Type::Composite { name: n, members, .. } if !members.is_empty() && self.name(*n) == name.as_bytes())
        }).map(|i| i as u32)
    }

    /// The member `name` of composite `id`, searching anonymous members:
    /// its byte offset and type.
    fn member(&self, id: u32, name: &str, depth: u32) -> Option<(usize, u32)> {
        let Type::Composite { members, .. } = self.resolve(id).1 else {
            return None;
        };
        for m in members {
            let found = if self.name(m.name).is_empty() && depth < 8 {
                self.member(m.type_id, name, depth + 1)
            } else if self.name(m.name) == name.as_bytes() {
                Some((0, m.type_id))
            } else {
                None
            };
            if let Some((inner, type_id)) = found {
                // A bitfield cannot be loaded as a whole field.
                if m.bit_offset % 8 != 0 || m.bits != 0 {
                    return None;
                }
                return Some((m.bit_offset as usize / 8 + inner, type_id));
            }
        }
        None
    }

    /// The byte offset and size of `path` (member names joined by dots) in
    /// struct `root`.
    pub fn field(&self, root: &str, path: &str) -> Result<(usize, usize), LayoutError> {
        let mut id = self
            .find_struct(root)
            .ok_or_else(|| LayoutError::Field(format!("no struct {root}")))?;
        let mut offset = 0;
        for name in path.split('.') {
            // An array is entered at its first element.
            if let (_, Type::Array { element, .. }) = self.resolve(id) {
                id = *element;
            }
            let (at, type_id) = self
                .member(id, name, 0)
                .ok_or_else(|| LayoutError::Field(format!("struct {root} has no member {path} (at {name})")))?;
            offset += at;
            id = type_id;
        }
        let size = self
            .size_of(id)
            .ok_or_else(|| LayoutError::Field(format!("{root}.{path} has no size")))?;
        Ok((offset, size))
    }
}

/// The offsets of every field in [`FIELDS`], indexed as `layout` numbers
/// them; an error names the first field that is missing or has another
/// size than the programs read.
pub fn resolve(btf: &Btf) -> Result<[u32; layout::COUNT], LayoutError> {
    let mut offsets = [0u32; layout::COUNT];
    for (index, root, path, want) in FIELDS {
        let (offset, size) = btf.field(root, path)?;
        if size != want {
            return Err(LayoutError::Field(format!("{root}.{path} is {size} bytes, not {want}")));
        }
        offsets[index] = u32::try_from(offset).map_err(|_| LayoutError::Field(format!("{root}.{path} too far")))?;
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field resolves on the running kernel (BTF is a start-up
    /// requirement of the agent), each index once, and the TCP counters
    /// lie inside `tcp_sock` past the `sock` it begins with.
    #[test]
    fn every_field_resolves_on_this_kernel() {
        let btf = Btf::from_kernel().expect("kernel BTF");
        let offsets = resolve(&btf).expect("every field");
        let mut indexes: Vec<usize> = FIELDS.iter().map(|f| f.0).collect();
        indexes.sort();
        assert_eq!(indexes, (0..layout::COUNT).collect::<Vec<_>>());
        let (sock_common, _) = btf.field("sock", "__sk_common").unwrap();
        assert_eq!(sock_common, 0, "struct sock starts with sock_common");
        let (sock, _) = btf.field("tcp_sock", "inet_conn.icsk_inet.sk").unwrap();
        assert_eq!(sock, 0, "tcp_sock starts with its sock");
        assert!(offsets[layout::TCP_BYTES_ACKED] > offsets[layout::TCP_TOS]);
        // rtt_min is a minmax of three samples {t, v}: the first's value.
        let (rtt_min, size) = btf.field("tcp_sock", "rtt_min").unwrap();
        assert_eq!(size, 24);
        assert_eq!(offsets[layout::TCP_RTT_MIN] as usize, rtt_min + 4);
    }

    /// A hand-built BTF blob: a struct with an anonymous union holding a
    /// u16, and a bitfield-flagged struct.
    #[test]
    fn members_are_found_through_anonymous_unions_and_typedefs() {
        let mut strings = b"\0u16\0outer\0port\0inner\0".to_vec();
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            (strings_find(&strings, needle.as_bytes()) + 1) as u32
        };
        let (u16_name, outer, port, inner) = (name("u16"), name("outer"), name("port"), name("inner"));
        let mut types = Vec::new();
        let mut push = |words: &[u32]| types.extend(words.iter().flat_map(|w| w.to_ne_bytes()));
        // 1: int u16 (size 2), encoding word.
        push(&[u16_name, 1 << 24, 2, 16]);
        // 2: typedef of 1.
        push(&[u16_name, 8 << 24, 1]);
        // 3: anonymous union { port: typedef u16 at 0 }.
        push(&[0, (5 << 24) | 1, 2, port, 2, 0]);
        // 4: struct outer { u16 pad at 0; union at bit 32 }.
        push(&[outer, (4 << 24) | 2, 8, inner, 1, 0, 0, 3, 32]);
        let mut blob = Vec::new();
        blob.extend(BTF_MAGIC.to_ne_bytes());
        blob.extend([1u8, 0]);
        for word in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            blob.extend(word.to_ne_bytes());
        }
        blob.extend(&types);
        blob.append(&mut strings);
        let btf = Btf::parse(&blob).expect("valid BTF");
        assert_eq!(btf.field("outer", "port").unwrap(), (4, 2));
        assert_eq!(btf.field("outer", "inner").unwrap(), (0, 2));
        assert!(matches!(btf.field("outer", "missing"), Err(LayoutError::Field(_))));
        assert!(matches!(btf.field("nothing", "port"), Err(LayoutError::Field(_))));
        assert!(Btf::parse(&blob[..30]).is_err());
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
    }

    fn strings_find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("present")
    }
}
