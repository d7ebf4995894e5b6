//! The arena planner: every activation value gets a byte offset in one forward arena, by liveness.

use ddpm_core::format::{DType, ALIGN};
use ddpm_core::ops::Conv2dShape;
use ddpm_core::program::Op;

use crate::graph::{Graph, Shape};

/// The scratch value the executor needs for `op` (what `ddpm_core`'s op validation requires of it):
/// a convolution's zero-padded copy of its input, attention's four `(c, h, w)` buffers (q, k, v and the
/// core output), the int8 attention core's one i32 per token. Other ops need none: a zero-sized f32 value.
pub fn scratch_shape(g: &Graph, op: &Op) -> Shape {
    let f32s = |c, h, w| Shape { c, h, w, dtype: DType::F32, scale: 0.0, zero: 0 };
    match *op {
        Op::Conv2d { out, x, w, stride, pad, .. } => {
            let (x, o, dims) = (g.shape(x), g.shape(out), &g.tensors[w as usize].dims);
            let geometry = Conv2dShape {
                ci: x.c,
                h: x.h,
                w: x.w,
                co: o.c,
                kh: dims[2],
                kw: dims[3],
                stride: stride as usize,
                pad: pad.map(|p| p as usize),
                ho: o.h,
                wo: o.w,
            };
            let (c, h, w) = geometry.scratch_shape();
            f32s(c, h, w)
        }
        Op::Attention { x, .. } => {
            let s = g.shape(x);
            f32s(4 * s.c, s.h, s.w)
        }
        Op::QSdpa { q, .. } => {
            let s = g.shape(q);
            Shape { c: s.h * s.w, h: 1, w: 1, dtype: DType::I32, scale: 0.0, zero: 0 }
        }
        _ => f32s(0, 0, 0),
    }
}

/// Where each value lives in the forward arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Byte offset of each value, in value order (16-byte aligned).
    pub offsets: Vec<usize>,
    /// Arena bytes one forward pass needs.
    pub arena_bytes: usize,
}

impl Graph {
    /// Assigns arena offsets by liveness, first fit: a value occupies its range from the first op that touches
    /// it to the last; values whose ranges do not overlap may share memory. `pinned` values (input, output)
    /// live for the whole program. Returns byte offsets and the arena size.
    /// Aliased values (`self.aliases`) form one slot: the union of their lifetimes, the largest of their sizes.
    pub fn plan(&self, pinned: &[u32]) -> Plan {
        let n = self.values.len();
        // Slot representative of each value.
        let mut slot: Vec<usize> = (0..n).collect();
        for &(a, b) in &self.aliases {
            let (root, old) = (slot[a as usize], slot[b as usize]);
            for s in slot.iter_mut().filter(|s| **s == old) {
                *s = root;
            }
        }
        let mut first = vec![usize::MAX; n];
        let mut last = vec![0usize; n];
        let mut size = vec![0usize; n];
        for (i, op) in self.ops.iter().enumerate() {
            op.for_each_value(|v, _| {
                let v = slot[v as usize];
                first[v] = first[v].min(i);
                last[v] = last[v].max(i);
            });
        }
        for &p in pinned {
            let p = slot[p as usize];
            first[p] = 0;
            last[p] = self.ops.len();
        }
        for (v, s) in self.values.iter().enumerate() {
            size[slot[v]] = size[slot[v]].max(s.bytes().next_multiple_of(ALIGN));
        }
        let bytes = |v: usize| size[v];
        let mut order: Vec<usize> = (0..n).filter(|&v| first[v] != usize::MAX).collect();
        // Place long-lived and large values first: fewer holes.
        order.sort_by_key(|&v| (first[v], std::cmp::Reverse(bytes(v))));
        let mut offsets = vec![0usize; n];
        let mut placed: Vec<usize> = Vec::new();
        let mut arena = 0usize;
        for v in order {
            // Ranges taken by placed values whose lifetimes overlap v's, sorted by offset.
            let mut busy: Vec<(usize, usize)> = placed
                .iter()
                .filter(|&&u| first[u] <= last[v] && first[v] <= last[u])
                .map(|&u| (offsets[u], offsets[u] + bytes(u)))
                .collect();
            busy.sort_unstable();
            let mut at = 0usize;
            for (s, e) in busy {
                if at + bytes(v) <= s {
                    break;
                }
                at = at.max(e);
            }
            offsets[v] = at;
            arena = arena.max(at + bytes(v));
            placed.push(v);
        }
        let offsets = (0..n).map(|v| offsets[slot[v]]).collect();
        Plan { offsets, arena_bytes: arena }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm_core::program::Op;

    #[test]
    fn planner_reuses_dead_values_and_keeps_live_ones_apart() {
        let mut g = Graph::default();
        let a = g.value(4, 1, 1);
        let b = g.value(4, 1, 1);
        let c = g.value(4, 1, 1);
        g.push(Op::Silu { out: b, x: a }); // a dies here
        g.push(Op::Silu { out: c, x: b }); // b dies here; c may take a's place
        let Plan { offsets: off, arena_bytes: arena } = g.plan(&[]);
        assert_ne!(off[a as usize], off[b as usize]);
        assert_ne!(off[b as usize], off[c as usize]);
        assert_eq!(off[c as usize], off[a as usize]);
        assert_eq!(arena, 32);
        // Pinned input stays reserved for the whole program.
        let off = g.plan(&[a]).offsets;
        assert_ne!(off[c as usize], off[a as usize]);
    }
}
