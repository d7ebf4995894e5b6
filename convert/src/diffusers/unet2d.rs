//! diffusers `UNet2DModel` → program. Reads like `UNet2DModel.forward` (diffusers `models/unets/unet_2d.py`)
//! and its blocks (`unet_2d_blocks.py`, `resnet.py`, `attention_processor.py`): one call per module, state-dict
//! names as in diffusers.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::{bail, err};
use ddpm_core::ops::conv_out_len;
use ddpm_core::program::Op;

use super::config::UNetConfig;
use crate::graph::{Graph, SCRATCH};
use crate::load::Tensor;

/// Builds the program, consuming the tensors it uses from `sd`. Returns the graph and its input and output
/// values. Tensors left in `sd` afterwards were not used.
pub fn build(cfg: &UNetConfig, sd: &mut BTreeMap<String, Tensor>) -> Result<(Graph, u32, u32)> {
    let mut b = Builder { g: Graph::default(), sd, cfg };
    let (h, w) = (cfg.height, cfg.width);
    let c0 = cfg.block_out_channels[0];
    let levels = cfg.block_out_channels.len();

    let input = b.g.value(cfg.in_channels, h, w);
    let mut sample = input;
    if cfg.center_input_sample {
        // sample = 2 * sample - 1.0
        sample = b.g.value(cfg.in_channels, h, w);
        b.g.push(Op::Affine { out: sample, x: input, mul: 2.0, add: -1.0 });
    }

    // Time embedding: time_proj (Timesteps), then time_embedding (TimestepEmbedding: linear, SiLU, linear).
    let t_emb = b.g.value(c0, 1, 1);
    b.g.push(Op::TimestepEmbed {
        out: t_emb,
        flip_sin_to_cos: cfg.flip_sin_to_cos,
        freq_shift: cfg.freq_shift,
        max_period: 10000.0,
    });
    let emb = b.linear("time_embedding.linear_1", t_emb, cfg.time_embed_dim)?;
    b.g.push(Op::Silu { out: emb, x: emb });
    let emb = b.linear("time_embedding.linear_2", emb, cfg.time_embed_dim)?;
    if let Some(n) = cfg.num_class_embeds {
        let table = b.weight("class_embedding.weight", &[n, cfg.time_embed_dim])?;
        b.g.push(Op::ClassEmbed { out: emb, table });
    }
    // Every ResnetBlock2D applies SiLU to the embedding before its time_emb_proj: do it once.
    let temb = b.g.value(cfg.time_embed_dim, 1, 1);
    b.g.push(Op::Silu { out: temb, x: emb });

    let mut sample = b.conv("conv_in", sample, c0, 1, [1; 4])?;
    let mut res_samples = vec![sample];

    // Down blocks.
    for (i, &out_ch) in cfg.block_out_channels.iter().enumerate() {
        for j in 0..cfg.layers_per_block {
            sample = b.resnet(&format!("down_blocks.{i}.resnets.{j}"), sample, out_ch, temb, 1.0)?;
            if cfg.down_attn[i] {
                sample =
                    b.attention(&format!("down_blocks.{i}.attentions.{j}"), sample, Some(cfg.norm_num_groups), 1.0)?;
            }
            res_samples.push(sample);
        }
        if i + 1 < levels {
            // Downsample2D: padding 0 means F.pad(x, (0, 1, 0, 1)) then a stride-2 convolution without padding.
            let p = cfg.downsample_padding as u32;
            let pad = if p == 0 { [0, 0, 1, 1] } else { [p; 4] };
            sample = b.conv(&format!("down_blocks.{i}.downsamplers.0.conv"), sample, out_ch, 2, pad)?;
            res_samples.push(sample);
        }
    }

    // Mid block: resnet, attention, resnet; output_scale_factor = mid_block_scale_factor.
    if cfg.mid_block {
        let c = *cfg.block_out_channels.last().unwrap_or(&c0);
        let osf = cfg.mid_block_scale_factor;
        sample = b.resnet("mid_block.resnets.0", sample, c, temb, osf)?;
        if cfg.add_attention {
            // attn_groups = attn_norm_num_groups, else resnet_groups with the default shift, else no norm.
            let groups = cfg.attn_norm_num_groups.or((!cfg.scale_shift).then_some(cfg.norm_num_groups));
            sample = b.attention("mid_block.attentions.0", sample, groups, osf)?;
        }
        sample = b.resnet("mid_block.resnets.1", sample, c, temb, osf)?;
    }

    // Up blocks: each resnet takes the concatenation of the running sample and the latest skip.
    for (i, &out_ch) in cfg.block_out_channels.iter().rev().enumerate() {
        for j in 0..=cfg.layers_per_block {
            let skip = res_samples.pop().ok_or_else(|| err!(Model, "internal: skip stack exhausted"))?;
            let cat = b.concat(sample, skip);
            sample = b.resnet(&format!("up_blocks.{i}.resnets.{j}"), cat, out_ch, temb, 1.0)?;
            if cfg.up_attn[i] {
                sample =
                    b.attention(&format!("up_blocks.{i}.attentions.{j}"), sample, Some(cfg.norm_num_groups), 1.0)?;
            }
        }
        if i + 1 < levels {
            // Upsample2D: nearest ×2, then a 3×3 convolution.
            let s = b.g.shape(sample);
            let up = b.g.value(s.c, 2 * s.h, 2 * s.w);
            b.g.push(Op::Upsample2x { out: up, x: sample });
            sample = b.conv(&format!("up_blocks.{i}.upsamplers.0.conv"), up, out_ch, 1, [1; 4])?;
        }
    }

    // conv_norm_out, conv_act (SiLU), conv_out.
    let normed = b.group_norm("conv_norm_out", sample, cfg.norm_num_groups, true)?;
    let output = b.conv("conv_out", normed, cfg.out_channels, 1, [1; 4])?;
    Ok((b.g, input, output))
}

struct Builder<'s> {
    g: Graph,
    sd: &'s mut BTreeMap<String, Tensor>,
    cfg: &'s UNetConfig,
}

impl Builder<'_> {
    /// Takes a tensor from the state dict, checking its shape (a `[o, i, 1, 1]` kernel serves as `[o, i]`).
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<u32> {
        let t = self.sd.remove(name).ok_or_else(|| err!(Model, "missing tensor '{name}'"))?;
        let fits = t.shape == shape || (shape.len() == 2 && t.shape == [shape[0], shape[1], 1, 1]);
        if !fits {
            bail!(Model, "tensor {name}: expected {shape:?}, found {:?}", t.shape);
        }
        Ok(self.g.tensor(name, shape.to_vec(), t.data))
    }

    fn linear(&mut self, prefix: &str, x: u32, out: usize) -> Result<u32> {
        let i = self.g.shape(x).c;
        let w = self.weight(&format!("{prefix}.weight"), &[out, i])?;
        let bias = self.weight(&format!("{prefix}.bias"), &[out])?;
        let o = self.g.value(out, 1, 1);
        self.g.push(Op::Linear { out: o, x, w, b: bias });
        Ok(o)
    }

    fn conv(&mut self, prefix: &str, x: u32, out: usize, stride: u32, pad: [u32; 4]) -> Result<u32> {
        let s = self.g.shape(x);
        let k = self.sd.get(&format!("{prefix}.weight")).and_then(|t| t.shape.get(2).copied()).unwrap_or(3);
        let w = self.weight(&format!("{prefix}.weight"), &[out, s.c, k, k])?;
        let bias = self.weight(&format!("{prefix}.bias"), &[out])?;
        let [pt, pl, pb, pr] = pad.map(|p| p as usize);
        let ho = conv_out_len(s.h, k, stride as usize, pt, pb);
        let wo = conv_out_len(s.w, k, stride as usize, pl, pr);
        let (Some(ho), Some(wo)) = (ho, wo) else {
            bail!(Model, "{prefix}: a {k}x{k} kernel does not fit a {}x{} input", s.h, s.w);
        };
        let o = self.g.value(out, ho, wo);
        self.g.push(Op::Conv2d { out: o, x, w, b: bias, stride, pad, scratch: SCRATCH });
        Ok(o)
    }

    /// GroupNorm into a new value (with SiLU when `silu`).
    fn group_norm(&mut self, prefix: &str, x: u32, groups: usize, silu: bool) -> Result<u32> {
        let s = self.g.shape(x);
        let o = self.g.value(s.c, s.h, s.w);
        self.group_norm_into(prefix, o, x, groups, silu)?;
        Ok(o)
    }

    fn group_norm_into(&mut self, prefix: &str, out: u32, x: u32, groups: usize, silu: bool) -> Result<()> {
        let c = self.g.shape(x).c;
        if groups == 0 || !c.is_multiple_of(groups) {
            bail!(Model, "{prefix}: {groups} groups do not divide {c} channels");
        }
        let gamma = self.weight(&format!("{prefix}.weight"), &[c])?;
        let beta = self.weight(&format!("{prefix}.bias"), &[c])?;
        self.g.push(Op::GroupNorm { out, x, gamma, beta, groups: groups as u32, eps: self.cfg.norm_eps, silu });
        Ok(())
    }

    fn concat(&mut self, a: u32, b: u32) -> u32 {
        let (sa, sb) = (self.g.shape(a), self.g.shape(b));
        let o = self.g.value(sa.c + sb.c, sa.h, sa.w);
        self.g.push(Op::Concat { out: o, a, b });
        o
    }

    /// ResnetBlock2D (diffusers `resnet.py`):
    /// `out = (shortcut(x) + conv2(act(norm2(conv1(act(norm1(x))) ⊕ temb))) / output_scale_factor`.
    fn resnet(&mut self, p: &str, x: u32, out_ch: usize, temb: u32, output_scale_factor: f32) -> Result<u32> {
        let groups = self.cfg.norm_num_groups;
        let in_ch = self.g.shape(x).c;
        let h = self.group_norm(&format!("{p}.norm1"), x, groups, true)?;
        let h = self.conv(&format!("{p}.conv1"), h, out_ch, 1, [1; 4])?;
        let proj_ch = if self.cfg.scale_shift { 2 * out_ch } else { out_ch };
        let t = self.linear(&format!("{p}.time_emb_proj"), temb, proj_ch)?;
        if self.cfg.scale_shift {
            // h = norm2(h) * (1 + scale) + shift, then SiLU
            self.group_norm_into(&format!("{p}.norm2"), h, h, groups, false)?;
            self.g.push(Op::ScaleShift { x: h, v: t });
            self.g.push(Op::Silu { out: h, x: h });
        } else {
            // h = SiLU(norm2(h + temb))
            self.g.push(Op::AddChannel { x: h, v: t });
            self.group_norm_into(&format!("{p}.norm2"), h, h, groups, true)?;
        }
        let h = self.conv(&format!("{p}.conv2"), h, out_ch, 1, [1; 4])?;
        let shortcut =
            if in_ch != out_ch { self.conv(&format!("{p}.conv_shortcut"), x, out_ch, 1, [0; 4])? } else { x };
        self.g.push(Op::Add { out: h, a: shortcut, b: h, scale: 1.0 / output_scale_factor });
        Ok(h)
    }

    /// Attention with `residual_connection=True`, `bias=True` (diffusers `attention_processor.py`):
    /// `out = (x + to_out(MHA(to_q(xn), to_k(xn), to_v(xn)))) / rescale_output_factor`, `xn = group_norm(x)`
    /// when the block has a group norm. Heads: `channels / attention_head_dim` (one head when it is None).
    fn attention(&mut self, p: &str, x: u32, groups: Option<usize>, rescale_output_factor: f32) -> Result<u32> {
        let s = self.g.shape(x);
        let c = s.c;
        let heads = self.cfg.attention_head_dim.map_or(1, |d| c / d);
        let xn = match groups {
            Some(g) => self.group_norm(&format!("{p}.group_norm"), x, g, false)?,
            None => x,
        };
        let mut w = [0u32; 8];
        for (k, name) in ["to_q", "to_k", "to_v", "to_out.0"].iter().enumerate() {
            w[2 * k] = self.weight(&format!("{p}.{name}.weight"), &[c, c])?;
            w[2 * k + 1] = self.weight(&format!("{p}.{name}.bias"), &[c])?;
        }
        self.g.push(Op::Attention {
            out: x,
            x,
            xn,
            scratch: SCRATCH,
            w,
            heads: heads as u32,
            scale: 1.0 / rescale_output_factor,
        });
        Ok(x)
    }
}
