//! The compute kernels: one GLSL file per op under `gpu/shaders/` (attention in three phases; `LinearRows` runs
//! on the dense-layer kernel, which applies a layer to each row), compiled to SPIR-V by `build.rs`, and their
//! pipelines over one shared layout, built for the kernels a model uses.
//!
//! The layout is one descriptor set of seven storage buffers (declared in `shaders/common.glsl`) and
//! [`PUSH_WORDS`] words of push constants, so the set is bound once and every kernel reads its parameters
//! (arena offsets in floats, sizes, tensor word offsets) from the push constants.

use std::collections::BTreeMap;
use std::sync::Arc;

use vulkano::descriptor_set::layout::{
    DescriptorSetLayout, DescriptorSetLayoutBinding, DescriptorSetLayoutCreateInfo, DescriptorType,
};
use vulkano::pipeline::compute::ComputePipelineCreateInfo;
use vulkano::pipeline::layout::{PipelineLayoutCreateInfo, PushConstantRange};
use vulkano::pipeline::{ComputePipeline, PipelineLayout, PipelineShaderStageCreateInfo};
use vulkano::shader::{ShaderModule, ShaderModuleCreateInfo, ShaderStages};

use crate::error::{vk, Error};

/// Push-constant words every kernel may use (96 bytes; Vulkan guarantees 128).
pub(crate) const PUSH_WORDS: usize = 24;
/// Storage-buffer bindings of the one descriptor set (see `shaders/common.glsl`).
pub(crate) const BINDINGS: u32 = 7;

macro_rules! kernels {
    ($($kind:ident => $file:literal,)*) => {
        /// A compute kernel.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Kernel { $($kind,)* }

        impl Kernel {
            pub(crate) const ALL: &'static [Kernel] = &[$(Kernel::$kind,)*];

            /// The kernel's SPIR-V, compiled from `shaders/<file>.comp` at build time.
            fn spirv(self) -> &'static [u8] {
                match self {
                    $(Kernel::$kind => include_bytes!(concat!(env!("OUT_DIR"), "/", $file, ".spv")),)*
                }
            }
        }
    };
}

kernels! {
    TimestepEmbed => "timestep_embed",
    Linear => "linear",
    Silu => "silu",
    ClassEmbed => "class_embed",
    Conv2d => "conv2d",
    GroupNorm => "group_norm",
    AddChannel => "add_channel",
    ScaleShift => "scale_shift",
    Add => "add",
    AttentionProject => "attention_project",
    AttentionCore => "attention_core",
    AttentionOutput => "attention_output",
    Upsample2x => "upsample2x",
    Concat => "concat",
    Affine => "affine",
    LayerNorm => "layer_norm",
    ConvTranspose2d => "conv_transpose2d",
    TimestepTable => "timestep_table",
    ClassTable => "class_table",
    Unary => "unary",
    Binary => "binary",
    BinaryConst => "binary_const",
    Permute => "permute",
    MatMul => "matmul",
    Softmax => "softmax",
    Reduce => "reduce",
    Slice => "slice",
    ConcatAxis => "concat_axis",
    Constant => "constant",
    Pool2d => "pool2d",
    Resize => "resize",
    Pad => "pad",
    Noise => "noise",
    SamplerState => "sampler_state",
    SamplerStep => "sampler_step",
}

/// Workgroup width of every kernel except [`Kernel::GroupNorm`] and [`Kernel::LayerNorm`] (one workgroup of 256
/// per group or row) and [`Kernel::SamplerState`] (one invocation).
pub(crate) const WORKGROUP: u32 = 64;

/// The pipelines of the kernels a model uses, over the shared layout.
pub(crate) struct Kernels {
    pub(crate) set_layout: Arc<DescriptorSetLayout>,
    pub(crate) layout: Arc<PipelineLayout>,
    /// By position in [`Kernel::ALL`]; `None` for a kernel not asked for.
    pipelines: Vec<Option<Arc<ComputePipeline>>>,
}

impl Kernels {
    /// Builds the pipelines of the kernels in `used` (each once, however often it appears): a driver compiles
    /// every pipeline it is given, and most programs use a few of the kernels.
    pub(crate) fn new(device: &Arc<vulkano::device::Device>, used: &[Kernel]) -> Result<Kernels, Error> {
        let binding = DescriptorSetLayoutBinding {
            stages: ShaderStages::COMPUTE,
            ..DescriptorSetLayoutBinding::descriptor_type(DescriptorType::StorageBuffer)
        };
        let set_layout = DescriptorSetLayout::new(
            device.clone(),
            DescriptorSetLayoutCreateInfo {
                bindings: (0..BINDINGS).map(|b| (b, binding.clone())).collect::<BTreeMap<_, _>>(),
                ..Default::default()
            },
        )
        .map_err(vk("vkCreateDescriptorSetLayout"))?;
        let layout = PipelineLayout::new(
            device.clone(),
            PipelineLayoutCreateInfo {
                set_layouts: vec![set_layout.clone()],
                push_constant_ranges: vec![PushConstantRange {
                    stages: ShaderStages::COMPUTE,
                    offset: 0,
                    size: (PUSH_WORDS * 4) as u32,
                }],
                ..Default::default()
            },
        )
        .map_err(vk("vkCreatePipelineLayout"))?;
        let mut pipelines = Vec::with_capacity(Kernel::ALL.len());
        for &k in Kernel::ALL {
            if !used.contains(&k) {
                pipelines.push(None);
                continue;
            }
            let words = vulkano::shader::spirv::bytes_to_words(k.spirv())
                .map_err(|e| Error::Vulkan(format!("SPIR-V of {k:?}: {e}")))?;
            // SAFETY: the SPIR-V was produced by glslangValidator from this crate's shaders at build time, so it
            // is valid SPIR-V; vulkano reflects it and checks it against the layout below.
            let module = unsafe { ShaderModule::new(device.clone(), ShaderModuleCreateInfo::new(&words)) }
                .map_err(vk("vkCreateShaderModule"))?;
            let entry = module.entry_point("main").ok_or_else(|| Error::Vulkan(format!("{k:?}: no main")))?;
            let info =
                ComputePipelineCreateInfo::stage_layout(PipelineShaderStageCreateInfo::new(entry), layout.clone());
            let pipeline = ComputePipeline::new(device.clone(), None, info).map_err(vk("vkCreateComputePipelines"))?;
            pipelines.push(Some(pipeline));
        }
        Ok(Kernels { set_layout, layout, pipelines })
    }

    /// The pipeline of `k`, if it was built.
    pub(crate) fn pipeline(&self, k: Kernel) -> Result<Arc<ComputePipeline>, Error> {
        let i = Kernel::ALL.iter().position(|&x| x == k);
        i.and_then(|i| self.pipelines[i].clone())
            .ok_or_else(|| Error::Vulkan(format!("internal: no pipeline was built for the {k:?} kernel")))
    }
}
