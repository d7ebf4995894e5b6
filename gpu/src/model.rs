//! [`GpuModel`]: a model's weights and arenas on the device, and its command buffers, recorded once.

use std::sync::Arc;

use ddpm_core::sampler::{Method, SampleSpec};
use ddpm_core::{Model, RunError, Schedule};
use vulkano::buffer::{Buffer, BufferContents, BufferCreateInfo, BufferUsage, Subbuffer};
use vulkano::command_buffer::{
    AutoCommandBufferBuilder, BufferCopy, CommandBufferUsage, CopyBufferInfo, PrimaryAutoCommandBuffer,
    PrimaryCommandBufferAbstract,
};
use vulkano::descriptor_set::{DescriptorSet, WriteDescriptorSet};
use vulkano::device::Queue;
use vulkano::memory::allocator::{AllocationCreateInfo, MemoryTypeFilter, StandardMemoryAllocator};
use vulkano::memory::MemoryPropertyFlags;
use vulkano::pipeline::PipelineBindPoint;
use vulkano::sync::GpuFuture;

use crate::device::Device;
use crate::error::{vk, Error};
use crate::kernels::{Kernel, Kernels, PUSH_WORDS, WORKGROUP};
use crate::plan::{Dispatch, Plan};
use crate::sample::{
    self, StepRow, ST_CLASS, ST_DRAW, ST_FIRST_IMAGE, ST_METHOD, ST_ROW, ST_SEED_HI, ST_SEED_LO, ST_STEP, ST_TIMESTEP,
};

type Builder = AutoCommandBufferBuilder<PrimaryAutoCommandBuffer>;
type Recorded = Arc<PrimaryAutoCommandBuffer>;

/// Words of the run-state buffer (see `shaders/common.glsl`).
const STATE_WORDS: usize = 16;

/// A sampling run in progress.
#[derive(Debug, Clone, Copy)]
struct Run {
    steps: usize,
    done: usize,
}

/// A model on a device: weights uploaded once, one forward arena per batch element, and the forward pass, a
/// sampling step and the noise draw recorded once as command buffers and resubmitted.
///
/// Batching: every kernel runs the whole batch in one dispatch (workgroup z is the sample index, and sample
/// `n`'s arena is the blob's planned arena at `n · arena_bytes`), so the converter's memory plan is reused
/// unchanged and the dispatch count does not grow with the batch.
pub struct GpuModel {
    queue: Arc<Queue>,
    batch: u32,
    plan: Plan,
    in_len: usize,
    out_len: usize,
    num_classes: u32,
    schedule: Schedule,
    in_channels: usize,
    out_channels: usize,
    alphas_cumprod: Vec<f32>,
    state: Subbuffer<[u32]>,
    table: Subbuffer<[f32]>,
    emb: Subbuffer<[f32]>,
    staging_in: Subbuffer<[f32]>,
    staging_out: Subbuffer<[f32]>,
    forward: Recorded,
    step: Recorded,
    noise: Recorded,
    load_xt: Recorded,
    read_xt: Recorded,
    run: Option<Run>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel").field("batch", &self.batch).field("dispatches", &self.plan.dispatches.len()).finish()
    }
}

fn buffer<T: BufferContents>(
    memory: &Arc<StandardMemoryAllocator>,
    len: usize,
    host: bool,
) -> Result<Subbuffer<[T]>, Error> {
    let filter = if host {
        MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_RANDOM_ACCESS
    } else {
        MemoryTypeFilter::PREFER_DEVICE
    };
    Buffer::new_slice::<T>(
        memory.clone(),
        BufferCreateInfo {
            usage: BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_SRC | BufferUsage::TRANSFER_DST,
            ..Default::default()
        },
        AllocationCreateInfo { memory_type_filter: filter, ..Default::default() },
        len.max(1) as u64,
    )
    .map_err(vk("vkAllocateMemory"))
}

/// Copies `n` regions of `len` floats: region `k` from `src_at(k)` to `dst_at(k)` (offsets in floats).
fn copy_regions(
    b: &mut Builder,
    src: &Subbuffer<[f32]>,
    dst: &Subbuffer<[f32]>,
    n: u32,
    len: usize,
    src_at: impl Fn(u64) -> u64,
    dst_at: impl Fn(u64) -> u64,
) -> Result<(), Error> {
    if len == 0 {
        return Ok(());
    }
    let regions = (0..u64::from(n))
        .map(|k| BufferCopy {
            src_offset: src_at(k) * 4,
            dst_offset: dst_at(k) * 4,
            size: len as u64 * 4,
            ..Default::default()
        })
        .collect::<Vec<_>>();
    b.copy_buffer(CopyBufferInfo { regions: regions.into(), ..CopyBufferInfo::buffers(src.clone(), dst.clone()) })
        .map_err(vk("vkCmdCopyBuffer"))?;
    Ok(())
}

struct Recorder<'a> {
    kernels: &'a Kernels,
    set: Arc<DescriptorSet>,
}

impl Recorder<'_> {
    fn dispatch(&self, b: &mut Builder, d: &Dispatch) -> Result<(), Error> {
        b.bind_pipeline_compute(self.kernels.pipeline(d.kernel)?)
            .and_then(|b| {
                b.bind_descriptor_sets(PipelineBindPoint::Compute, self.kernels.layout.clone(), 0, self.set.clone())
            })
            .and_then(|b| b.push_constants(self.kernels.layout.clone(), 0, d.push))
            .map_err(vk("recording a dispatch"))?;
        // SAFETY: vulkano cannot check what a shader indexes, so a dispatch is unsafe. Ours stay in bounds:
        // every dispatch comes from `Plan::new` (or the fixed sampler dispatches of `GpuModel::new`), whose
        // offsets and sizes are those of a model that `ddpm_core::Model::new_checked` validated: each value lies
        // inside the per-sample arena of `stride` floats, each tensor inside the blob, and the shapes agree
        // (`program::validate`). The arena buffer holds `batch · stride` floats and workgroup z < batch; the
        // weight buffer holds the whole blob; x_t and x̂₀ hold `batch · C·H·W` floats; the step table and the
        // embedding table hold a row for every step and timestep the state buffer can name (the host writes
        // them before each submission). Every shader returns early for invocations past its element count, and
        // the convolution clamps its output channel for the weights it reads and writes only real channels. The
        // gathers of the imported-graph ops (transposed convolution, pooling, resizing, padding, permutation,
        // broadcasting) index their input only where the CPU's kernel does, inside shapes the validator checked;
        // the timestep table clamps its row, and the class the class table reads is checked on the host.
        unsafe { b.dispatch(d.groups) }.map_err(vk("vkCmdDispatch"))?;
        Ok(())
    }

    fn small(&self, b: &mut Builder, kernel: Kernel, words: &[u32], groups: [u32; 3]) -> Result<(), Error> {
        let mut push = [0u32; PUSH_WORDS];
        push[..words.len()].copy_from_slice(words);
        self.dispatch(b, &Dispatch { kernel, push, groups })
    }
}

/// The largest heap that device-local (or host-visible) memory types use: (heap index, bytes).
fn heap_for(p: &vulkano::device::physical::PhysicalDevice, flag: MemoryPropertyFlags) -> (u32, u64) {
    let m = p.memory_properties();
    m.memory_types
        .iter()
        .filter(|t| t.property_flags.intersects(flag))
        .map(|t| (t.heap_index, m.memory_heaps[t.heap_index as usize].size))
        .max_by_key(|&(_, size)| size)
        .unwrap_or((u32::MAX, 0))
}

/// Checks the bytes needed in device-local and host-visible memory against the largest heap of each kind
/// (`(heap index, bytes)`); where one heap serves both (integrated GPUs, lavapipe), against their sum.
fn check_fit(device_bytes: u64, host_bytes: u64, dev: (u32, u64), host: (u32, u64)) -> Result<(), Error> {
    if dev.0 == host.0 && device_bytes + host_bytes > dev.1 {
        return Err(Error::OutOfMemory { heap: "device", need: device_bytes + host_bytes, available: dev.1 });
    }
    if device_bytes > dev.1 {
        return Err(Error::OutOfMemory { heap: "device-local", need: device_bytes, available: dev.1 });
    }
    if host_bytes > host.1 {
        return Err(Error::OutOfMemory { heap: "host-visible", need: host_bytes, available: host.1 });
    }
    Ok(())
}

impl GpuModel {
    /// Uploads `model` to `device` for batches of `batch` samples, after checking that it fits the device's
    /// memory and limits, and records its command buffers.
    pub fn new(device: &Device, model: &Model<'_>, batch: u32) -> Result<GpuModel, Error> {
        if batch == 0 {
            return Err(Error::BadInput("batch must be at least 1".into()));
        }
        if model.precision() == ddpm_core::Precision::Int8 {
            return Err(Error::Unsupported("int8 blobs (run them on the CPU, or convert the model to f32 or f16)"));
        }
        let plan = Plan::new(model, batch)?;
        let (c_in, c_out) = (model.in_channels(), model.out_channels());
        let hw = model.height() * model.width();
        let (in_len, out_len) = (c_in * hw, c_out * hw);
        let n = batch as usize;
        let train_steps = model.schedule().num_train_timesteps as usize;
        let rows = train_steps + 1;
        let blob = model.bytes();
        let weight_words = blob.len().div_ceil(4);

        // Sizes in bytes, checked before anything is allocated.
        let arena_floats = n as u64 * u64::from(plan.stride);
        let device_bytes = 4 * (weight_words as u64 + arena_floats + 2 * (n * in_len) as u64);
        let host_bytes = 4
            * (STATE_WORDS + rows * sample::ROW_FLOATS + rows * plan.emb_width + n * in_len + n * out_len.max(in_len))
                as u64
            + 4 * weight_words as u64;
        let physical = device.device.physical_device();
        let dev = heap_for(physical, MemoryPropertyFlags::DEVICE_LOCAL);
        let host = heap_for(physical, MemoryPropertyFlags::HOST_VISIBLE);
        check_fit(device_bytes, host_bytes, dev, host)?;
        let props = physical.properties();
        let range = u64::from(props.max_storage_buffer_range);
        for (what, bytes) in [
            ("the weight buffer (bytes)", 4 * weight_words as u64),
            ("the arena buffer for this batch (bytes)", 4 * arena_floats),
            ("the embedding table (bytes)", 4 * (rows * plan.emb_width) as u64),
        ] {
            if bytes > range {
                return Err(Error::TooLarge { what, need: bytes, limit: range });
            }
        }
        let max_groups = props.max_compute_work_group_count;
        let sampler_groups = [(in_len as u32).div_ceil(WORKGROUP), 1, batch];
        for g in plan.dispatches.iter().map(|d| d.groups).chain([sampler_groups]) {
            if let Some(axis) = (0..2).find(|&i| g[i] > max_groups[i]) {
                return Err(Error::TooLarge {
                    what: "a dispatch's workgroup count",
                    need: u64::from(g[axis]),
                    limit: u64::from(max_groups[axis]),
                });
            }
        }
        if batch > max_groups[2] {
            return Err(Error::TooLarge { what: "the batch", need: u64::from(batch), limit: u64::from(max_groups[2]) });
        }

        let mem = &device.memory;
        // Weights: the blob itself, as little-endian words (f16 tensors stay f16 and are unpacked in the shaders).
        let weights_staging = buffer::<u32>(mem, weight_words, true)?;
        {
            let mut w = weights_staging.write().map_err(vk("mapping the weight staging buffer"))?;
            for (word, chunk) in w.iter_mut().zip(blob.chunks(4)) {
                let mut b = [0u8; 4];
                b[..chunk.len()].copy_from_slice(chunk);
                *word = u32::from_le_bytes(b);
            }
        }
        let weights = buffer::<u32>(mem, weight_words, false)?;
        let arena = buffer::<f32>(mem, arena_floats as usize, false)?;
        let xt = buffer::<f32>(mem, n * in_len, false)?;
        let x0 = buffer::<f32>(mem, n * in_len, false)?;
        let state = buffer::<u32>(mem, STATE_WORDS, true)?;
        let table = buffer::<f32>(mem, rows * sample::ROW_FLOATS, true)?;
        let emb = buffer::<f32>(mem, rows * plan.emb_width, true)?;
        let staging_in = buffer::<f32>(mem, n * in_len, true)?;
        let staging_out = buffer::<f32>(mem, n * out_len.max(in_len), true)?;
        {
            let mut e = emb.write().map_err(vk("mapping the embedding table"))?;
            for (t, row) in e.chunks_mut(plan.emb_width).take(train_steps).enumerate() {
                plan.embedding_row(t as f32, row);
            }
            state.write().map_err(vk("mapping the state buffer"))?.fill(0);
            table.write().map_err(vk("mapping the step table"))?.fill(0.0);
        }

        let mut used = plan.kernels();
        used.extend([Kernel::Noise, Kernel::SamplerState, Kernel::SamplerStep]);
        let kernels = Kernels::new(&device.device, &used)?;
        let set = DescriptorSet::new(
            device.sets.clone(),
            kernels.set_layout.clone(),
            [
                WriteDescriptorSet::buffer(0, arena.clone()),
                WriteDescriptorSet::buffer(1, weights.clone()),
                WriteDescriptorSet::buffer(2, state.clone()),
                WriteDescriptorSet::buffer(3, table.clone()),
                WriteDescriptorSet::buffer(4, emb.clone()),
                WriteDescriptorSet::buffer(5, xt.clone()),
                WriteDescriptorSet::buffer(6, x0.clone()),
            ],
            [],
        )
        .map_err(vk("vkAllocateDescriptorSets"))?;
        let rec = Recorder { kernels: &kernels, set };
        let family = device.queue.queue_family_index();
        let new_builder = || {
            AutoCommandBufferBuilder::primary(device.commands.clone(), family, CommandBufferUsage::MultipleSubmit)
                .map_err(vk("vkAllocateCommandBuffers"))
        };
        let build = |b: Builder| b.build().map_err(vk("vkEndCommandBuffer"));

        // One-shot upload of the weights.
        let mut b = new_builder()?;
        b.copy_buffer(CopyBufferInfo::buffers(weights_staging, weights.clone())).map_err(vk("vkCmdCopyBuffer"))?;
        submit(&device.queue, &build(b)?)?;

        let stride = u64::from(plan.stride);
        let in_off = (model.value(model.input_value()).ok_or(RunError::Inconsistent)?.offset / 4) as u64;
        let out_off = (model.value(model.output_value()).ok_or(RunError::Inconsistent)?.offset / 4) as u64;
        let (il, ol) = (in_len as u64, out_len as u64);

        // forward: staging_in -> input values; the program; output values -> staging_out.
        let mut b = new_builder()?;
        copy_regions(&mut b, &staging_in, &arena, batch, in_len, |k| k * il, |k| k * stride + in_off)?;
        for d in &plan.dispatches {
            rec.dispatch(&mut b, d)?;
        }
        copy_regions(&mut b, &arena, &staging_out, batch, out_len, |k| k * stride + out_off, |k| k * ol)?;
        let forward = build(b)?;

        // step: select the timestep, x_t -> input values, the program, the sampler update, advance.
        let s = model.schedule();
        let mut b = new_builder()?;
        rec.small(&mut b, Kernel::SamplerState, &[0], [1, 1, 1])?;
        copy_regions(&mut b, &xt, &arena, batch, in_len, |k| k * il, |k| k * stride + in_off)?;
        for d in &plan.dispatches {
            rec.dispatch(&mut b, d)?;
        }
        let step_words = [
            plan.stride,
            out_off as u32,
            in_len as u32,
            s.prediction_type.code(),
            s.variance_type.code(),
            u32::from(s.clip_sample),
            s.clip_sample_range.to_bits(),
        ];
        rec.small(&mut b, Kernel::SamplerStep, &step_words, sampler_groups)?;
        rec.small(&mut b, Kernel::SamplerState, &[1], [1, 1, 1])?;
        let step = build(b)?;

        let mut b = new_builder()?;
        rec.small(&mut b, Kernel::Noise, &[in_len as u32], sampler_groups)?;
        let noise = build(b)?;

        let mut b = new_builder()?;
        copy_regions(&mut b, &staging_in, &xt, 1, n * in_len, |_| 0, |_| 0)?;
        let load_xt = build(b)?;

        let mut b = new_builder()?;
        copy_regions(&mut b, &xt, &staging_out, 1, n * in_len, |_| 0, |_| 0)?;
        let read_xt = build(b)?;

        let mut alphas_cumprod = vec![0f32; train_steps];
        ddpm_core::sampler::schedule::alphas_cumprod(&s, model.trained_betas(), &mut alphas_cumprod);
        Ok(GpuModel {
            queue: device.queue.clone(),
            batch,
            plan,
            in_len,
            out_len,
            num_classes: model.num_classes(),
            schedule: s,
            in_channels: c_in,
            out_channels: c_out,
            alphas_cumprod,
            state,
            table,
            emb,
            staging_in,
            staging_out,
            forward,
            step,
            noise,
            load_xt,
            read_xt,
            run: None,
        })
    }

    /// The batch size the model was uploaded for.
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// Number of kernel dispatches in one forward pass.
    pub fn dispatches_per_forward(&self) -> usize {
        self.plan.dispatches.len()
    }

    fn check_class(&self, class: Option<u32>) -> Result<u32, Error> {
        match (class, self.num_classes) {
            (Some(_), 0) => Err(RunError::ClassNotSupported.into()),
            (None, n) if n > 0 => Err(RunError::ClassRequired.into()),
            (Some(c), n) if c >= n => Err(RunError::ClassOutOfRange { class: c, num_classes: n }.into()),
            (c, _) => Ok(c.unwrap_or(0)),
        }
    }

    fn write_state(&self, f: impl FnOnce(&mut [u32])) -> Result<(), Error> {
        let mut st = self.state.write().map_err(vk("mapping the state buffer"))?;
        f(&mut st);
        Ok(())
    }

    /// Runs the network on the whole batch: `x` is `batch × in_channels × H × W`, the result
    /// `batch × out_channels × H × W`, both f32 row-major, the same for every sample as `Model::forward`.
    pub fn forward(&mut self, x: &[f32], t: f32, class: Option<u32>) -> Result<Vec<f32>, Error> {
        let n = self.batch as usize;
        if x.len() != n * self.in_len {
            return Err(RunError::BadShape { expected: n * self.in_len, found: x.len() }.into());
        }
        if !t.is_finite() {
            return Err(RunError::BadTimestep.into());
        }
        let class = self.check_class(class)?;
        // A program with a timestep table takes the integer timesteps it has rows for (as on the CPU).
        let timestep = match self.plan.table_rows {
            Some(rows) if !(t >= 0.0 && t == t.floor() && t < rows as f32) => {
                return Err(RunError::TimestepNotInTable { rows }.into())
            }
            Some(_) => t as u32,
            None => 0,
        };
        // The forward pass reads its embedding from the table's last row; the run state it changes (row, class,
        // timestep) is restored afterwards, so a forward call in the middle of a run does not disturb the run.
        let row = self.alphas_cumprod.len();
        {
            let mut e = self.emb.write().map_err(vk("mapping the embedding table"))?;
            let width = self.plan.emb_width;
            self.plan.embedding_row(t, &mut e[row * width..(row + 1) * width]);
        }
        let saved = {
            let st = self.state.read().map_err(vk("mapping the state buffer"))?;
            (st[ST_ROW], st[ST_CLASS], st[ST_TIMESTEP])
        };
        self.write_state(|st| {
            st[ST_ROW] = row as u32;
            st[ST_CLASS] = class;
            st[ST_TIMESTEP] = timestep;
        })?;
        self.staging_in.write().map_err(vk("mapping the input buffer"))?[..x.len()].copy_from_slice(x);
        submit(&self.queue, &self.forward)?;
        self.write_state(|st| (st[ST_ROW], st[ST_CLASS], st[ST_TIMESTEP]) = saved)?;
        let out = self.staging_out.read().map_err(vk("mapping the output buffer"))?;
        Ok(out[..n * self.out_len].to_vec())
    }

    /// Draws `batch × C × H × W` elements of the noise stream on the device: for each `n < batch`, image
    /// `first_image + n` of draw `draw` for `seed`, the same numbers (up to the last bits of the device's
    /// `log`/`sin`/`cos`) as `ddpm_core::rng::fill_normal(.., seed, first_image + n, draw)`. Ends a run in progress.
    pub fn noise(&mut self, seed: u64, first_image: u32, draw: u32) -> Result<Vec<f32>, Error> {
        self.run = None;
        self.write_state(|st| {
            st[ST_FIRST_IMAGE] = first_image;
            st[ST_SEED_LO] = seed as u32;
            st[ST_SEED_HI] = (seed >> 32) as u32;
            st[ST_DRAW] = draw;
        })?;
        submit(&self.queue, &self.noise)?;
        self.read_samples()
    }

    fn read_samples(&self) -> Result<Vec<f32>, Error> {
        submit(&self.queue, &self.read_xt)?;
        let out = self.staging_out.read().map_err(vk("mapping the output buffer"))?;
        Ok(out[..self.batch as usize * self.in_len].to_vec())
    }

    /// Starts a sampling run: checks `spec` as `ddpm_core::sampler::Sampler::new` does, uploads the table of
    /// per-step scalars, and puts x_T on the device: from the noise stream (draw 0) on the device, or from
    /// `x_t` (`batch × C × H × W`, e.g. noise replayed from a PyTorch run). `spec.batch` must equal the batch
    /// the model was uploaded for. Returns the number of steps.
    pub fn start(&mut self, spec: SampleSpec, x_t: Option<&[f32]>) -> Result<usize, Error> {
        self.run = None;
        if spec.batch != self.batch {
            return Err(Error::BadInput(format!(
                "the sampling batch ({}) must equal the batch the model was uploaded for ({})",
                spec.batch, self.batch
            )));
        }
        let class = self.check_class(spec.class)?;
        let rows: Vec<StepRow> = sample::step_table(
            &self.schedule,
            &self.alphas_cumprod,
            spec.method,
            spec.steps,
            self.in_channels,
            self.out_channels,
        )?;
        // Every timestep of the run must have a row in the program's timestep tables (the CPU sampler fails at
        // the first step without one; here the run does not start).
        if let Some(table) = self.plan.table_rows {
            if rows.iter().any(|r| r[0] as u32 >= table) {
                return Err(RunError::TimestepNotInTable { rows: table }.into());
            }
        }
        {
            let mut tab = self.table.write().map_err(vk("mapping the step table"))?;
            for (dst, row) in tab.chunks_mut(sample::ROW_FLOATS).zip(&rows) {
                dst.copy_from_slice(row);
            }
        }
        self.write_state(|st| {
            st[ST_STEP] = 0;
            st[ST_CLASS] = class;
            st[ST_DRAW] = 0;
            st[ST_SEED_LO] = spec.seed as u32;
            st[ST_SEED_HI] = (spec.seed >> 32) as u32;
            st[ST_METHOD] = u32::from(matches!(spec.method, Method::Ddim { .. }));
            st[ST_FIRST_IMAGE] = spec.first_image;
        })?;
        match x_t {
            Some(given) => {
                let n = self.batch as usize * self.in_len;
                if given.len() != n {
                    return Err(Error::BadInput(format!("x_T has {} elements, expected {n}", given.len())));
                }
                self.staging_in.write().map_err(vk("mapping the input buffer"))?[..n].copy_from_slice(given);
                submit(&self.queue, &self.load_xt)?;
            }
            None => submit(&self.queue, &self.noise)?,
        }
        self.run = Some(Run { steps: rows.len(), done: 0 });
        Ok(rows.len())
    }

    /// Runs the next denoising step of the run on the device (one submission of the recorded step; no data
    /// crosses to the host). Returns the number of steps done.
    pub fn step(&mut self) -> Result<usize, Error> {
        let run = self.run.as_mut().filter(|r| r.done < r.steps).ok_or(Error::NoRun)?;
        run.done += 1;
        let done = run.done;
        submit(&self.queue, &self.step)?;
        Ok(done)
    }

    /// Steps done and total steps of the current run, if any.
    pub fn progress(&self) -> Option<(usize, usize)> {
        self.run.map(|r| (r.done, r.steps))
    }

    /// The current samples x_t of the run (after the last step: x_0), `batch × C × H × W`.
    pub fn samples(&self) -> Result<Vec<f32>, Error> {
        self.read_samples()
    }

    /// A whole run: [`GpuModel::start`], every [`GpuModel::step`] (calling `progress(done, total)` after
    /// each), then the samples. The same seed gives the same images as `ddpm_core::sampler::Sampler` up to
    /// floating-point rounding (see the crate docs for the measured differences).
    pub fn sample(
        &mut self,
        spec: SampleSpec,
        x_t: Option<&[f32]>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<f32>, Error> {
        let total = self.start(spec, x_t)?;
        for _ in 0..total {
            let done = self.step()?;
            progress(done, total);
        }
        self.samples()
    }
}

/// Submits a recorded command buffer and waits for it.
fn submit(queue: &Arc<Queue>, cb: &Recorded) -> Result<(), Error> {
    cb.clone()
        .execute(queue.clone())
        .map_err(vk("vkQueueSubmit"))?
        .then_signal_fence_and_flush()
        .map_err(vk("vkQueueSubmit"))?
        .wait(None)
        .map_err(vk("vkWaitForFences"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_checked_per_heap_and_shared_heaps_add_up() {
        let gib = 1u64 << 30;
        // Discrete GPU: 8 GiB device-local heap 0, 16 GiB host heap 1.
        assert!(check_fit(7 * gib, 15 * gib, (0, 8 * gib), (1, 16 * gib)).is_ok());
        let e = check_fit(9 * gib, gib, (0, 8 * gib), (1, 16 * gib)).unwrap_err();
        assert_eq!(e, Error::OutOfMemory { heap: "device-local", need: 9 * gib, available: 8 * gib });
        assert!(e.to_string().contains("9216.0 MiB of device-local memory, the device has 8192.0 MiB"), "{e}");
        assert!(matches!(
            check_fit(gib, 17 * gib, (0, 8 * gib), (1, 16 * gib)),
            Err(Error::OutOfMemory { heap: "host-visible", .. })
        ));
        // One heap for both: the sum counts.
        assert!(matches!(
            check_fit(5 * gib, 4 * gib, (0, 8 * gib), (0, 8 * gib)),
            Err(Error::OutOfMemory { heap: "device", .. })
        ));
    }
}
