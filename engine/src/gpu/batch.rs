//! Deferred kernel launches: a `Batch` records dispatches with their parameters, then encodes them in
//! one compute pass and one submit, with every parameter block packed into a single uniform buffer.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::Result;
use crate::gpu::Gpu;
use crate::gpu::pipeline::Pipeline;
use crate::gpu::shaders::ShaderSource;

enum Step {
    Dispatch(Dispatch),
    Copy { src: wgpu::Buffer, src_offset: u64, dst: wgpu::Buffer, dst_offset: u64, bytes: u64 },
    Clear(wgpu::Buffer),
}

struct Dispatch {
    pipeline: Arc<Pipeline>,
    params_offset: u64,
    params_size: u64,
    buffers: Vec<wgpu::Buffer>,
    groups: [u32; 3],
}

/// Dispatches recorded for one submit (one layer or one step).
pub struct Batch<'g> {
    gpu: &'g Gpu,
    steps: Vec<Step>,
    params: Vec<u8>,
    /// A launch that could not be recorded (reported by `submit`, before anything runs).
    refused: Option<String>,
}

impl Gpu {
    /// Starts recording a batch of dispatches.
    pub fn batch(&self) -> Batch<'_> {
        Batch { gpu: self, steps: Vec::new(), params: Vec::new(), refused: None }
    }
}

impl<'g> Batch<'g> {
    /// Records one dispatch of `entry` in `shader`. Binding 0 is the uniform `params` block; the
    /// `buffers` take bindings 1, 2, … in order and must be exactly those the entry point uses.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        shader: &ShaderSource,
        entry: &str,
        params: &P,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) {
        self.dispatch_with(shader, entry, &[], params, buffers, groups)
    }

    /// As [`Batch::dispatch`], with pipeline-overridable constants (e.g. a workgroup size).
    pub fn dispatch_with<P: bytemuck::Pod>(
        &mut self,
        shader: &ShaderSource,
        entry: &str,
        constants: &[(&str, f64)],
        params: &P,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) {
        if groups.contains(&0) {
            return; // nothing to do (an empty input); wgpu accepts it but skip the bind group
        }
        if !self.gpu.device.features().contains(shader.features) {
            self.refused.get_or_insert_with(|| {
                format!(
                    "{} / {entry} needs adapter features {:?} the device lacks",
                    shader.name, shader.features
                )
            });
            return;
        }
        let limit = self.gpu.device.limits().max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > limit) {
            // A launch that forgot to fold its grid: a clear error instead of wgpu's validation one.
            self.refused.get_or_insert_with(|| {
                format!(
                    "{} / {entry}: grid {groups:?} exceeds the adapter's {limit} workgroups per dimension",
                    shader.name
                )
            });
            return;
        }
        let pipeline = self.gpu.pipelines.get(&self.gpu.device, shader, entry, constants);
        let align = self.gpu.device.limits().min_uniform_buffer_offset_alignment as usize;
        let offset = self.params.len().next_multiple_of(align);
        self.params.resize(offset, 0);
        self.params.extend_from_slice(bytemuck::bytes_of(params));
        let size = (self.params.len() - offset).next_multiple_of(16);
        self.params.resize(offset + size, 0);
        self.steps.push(Step::Dispatch(Dispatch {
            pipeline,
            params_offset: offset as u64,
            params_size: size as u64,
            buffers: buffers.iter().map(|b| (*b).clone()).collect(),
            groups,
        }));
    }

    /// Records a buffer-to-buffer copy, performed after the dispatches recorded so far.
    pub fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        self.steps.push(Step::Copy { src: src.clone(), src_offset, dst: dst.clone(), dst_offset, bytes });
    }

    pub(crate) fn gpu_ref(&self) -> &'g Gpu {
        self.gpu
    }

    /// Records zero-filling `buffer`, performed after the dispatches recorded so far.
    pub fn clear(&mut self, buffer: &wgpu::Buffer) {
        self.steps.push(Step::Clear(buffer.clone()));
    }

    /// Number of steps (dispatches and copies) recorded.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Encodes everything into one command buffer and submits it. Does not wait (but when the GPU
    /// profiles, every step is submitted, waited for and timed on its own).
    pub fn submit(self) -> Result<()> {
        if let Some(refused) = self.refused {
            return Err(crate::Error::Gpu(refused));
        }
        if self.steps.is_empty() {
            return Ok(());
        }
        let launches = self.steps.iter().filter(|s| matches!(s, Step::Dispatch(_))).count();
        self.gpu.dispatches.fetch_add(launches as u64, std::sync::atomic::Ordering::Relaxed);
        let device = &self.gpu.device;
        let params = if self.params.is_empty() { vec![0u8; 16] } else { self.params };
        let params_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: &params,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let encode = |steps: &[Step]| {
            let mut encoder =
                device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("batch") });
            encode_steps(device, &mut encoder, steps, &params_buf);
            encoder.finish()
        };
        match &self.gpu.profiler {
            None => self.gpu.queue.submit([encode(&self.steps)]),
            Some(profiler) => {
                for step in &self.steps {
                    let commands = encode(std::slice::from_ref(step));
                    let start = std::time::Instant::now();
                    self.gpu.queue.submit([commands]);
                    self.gpu.wait()?;
                    let kernel = match step {
                        Step::Dispatch(d) => d.pipeline.label.as_str(),
                        Step::Copy { .. } => "copy",
                        Step::Clear(_) => "clear",
                    };
                    profiler.record(kernel, start.elapsed());
                }
                return self.gpu.check_errors();
            }
        };
        self.gpu.check_errors()
    }
}

/// Records `steps` into `encoder`: copies and clears as they come, each run of dispatches in one
/// compute pass.
fn encode_steps(
    device: &wgpu::Device,
    encoder: &mut wgpu::CommandEncoder,
    steps: &[Step],
    params_buf: &wgpu::Buffer,
) {
    let mut steps = steps.iter().peekable();
    while let Some(step) = steps.next() {
        match step {
            Step::Copy { src, src_offset, dst, dst_offset, bytes } => {
                encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, Some(*bytes));
                continue;
            }
            Step::Clear(buffer) => {
                encoder.clear_buffer(buffer, 0, None);
                continue;
            }
            Step::Dispatch(_) => {}
        }
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        let mut current = Some(step);
        while let Some(Step::Dispatch(d)) = current {
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: params_buf,
                    offset: d.params_offset,
                    size: std::num::NonZeroU64::new(d.params_size),
                }),
            }];
            for (j, b) in d.buffers.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry { binding: j as u32 + 1, resource: b.as_entire_binding() });
            }
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &d.pipeline.layout,
                entries: &entries,
            });
            pass.set_pipeline(&d.pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            current = steps.next_if(|s| matches!(s, Step::Dispatch(_)));
        }
    }
}
