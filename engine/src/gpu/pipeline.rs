//! Shader modules and compute pipelines, built once per (shader, entry point, constants) and cached.
//! The engine's own modules are built without naga's runtime checks (see [`PipelineCache::module`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::gpu::shaders::ShaderSource;

/// A compiled pipeline with its bind group layout (fetched once, not per dispatch).
pub(crate) struct Pipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
    /// `shader::entry` and any constants, for errors and profiles.
    pub(crate) label: String,
}

/// Cache of compiled shader modules and pipelines, owned by [`crate::gpu::Gpu`].
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<String, Arc<Pipeline>>>,
    /// Keep naga's runtime checks in every module (`GpuOptions::shader_checks`).
    shader_checks: bool,
}

impl PipelineCache {
    pub(crate) fn new(shader_checks: bool) -> Self {
        PipelineCache { modules: Mutex::default(), pipelines: Mutex::default(), shader_checks }
    }

    /// Whether `shader` is built with naga's runtime checks.
    pub(crate) fn checked(&self, shader: &ShaderSource) -> bool {
        self.shader_checks || !shader.trusted
    }

    /// Compiles `shader`. A trusted module ([`ShaderSource::trusted`]) is built without naga's runtime
    /// checks, unless `BABELRL_SHADER_CHECKS=1` asked for them: on lavapipe the bounds clamps cost
    /// 15–20% of a matmul.
    fn module(&self, device: &wgpu::Device, shader: &ShaderSource) -> wgpu::ShaderModule {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(shader.source.into()),
        };
        if self.checked(shader) {
            return device.create_shader_module(desc);
        }
        // SAFETY: `ShaderRuntimeChecks::unchecked()` drops naga's bounds clamps, loop bounding and
        // division guards, so the module must not need them. The engine's invariant for a trusted module:
        // - every launch goes through a typed `Batch` method that checks, before recording anything,
        //   that each bound buffer holds the elements the kernel indexes (`check::need`, which also
        //   requires whole 16-byte vectors for the `vec4` loads, and `check::need_weight` for 16-bit
        //   weights), so indices built from the launch parameters and the invocation id stay inside
        //   their bindings (the kernels clamp partial tiles with `min(…, last)` and test every store);
        // - an index read from a buffer's contents is clamped or range-tested in the shader: token ids
        //   (`embed_rows*`, against the table's rows), targets (`logprob_combine`, `xent_*`, against
        //   the vocabulary or the chunk's ids), the gathered RMSNorm's row map and the pooling spans
        //   (against `arrayLength` of x). The attention module, whose positions and cache slots are
        //   read from `tok` unchecked, is not trusted and keeps its checks;
        // - every loop runs to a bound taken from the parameters (no loop can be infinite), and an
        //   integer division by a parameter happens only after an early return that a zero divisor
        //   takes (`if (i >= p.t * p.r) { return; }` before `i / p.r`).
        // The tests in `engine/tests/inference/trusted.rs` check that a mis-sized launch is refused
        // and that the trusted and checked modules give the same numbers.
        unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
    }

    /// The pipeline for `entry` of `shader` with override `constants`, compiled on first use.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        shader: &ShaderSource,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Arc<Pipeline> {
        let mut key = format!("{}::{entry}", shader.name);
        for (k, v) in constants {
            key.push_str(&format!(";{k}={v}"));
        }
        if let Some(p) = self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return p.clone();
        }
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            modules.entry(shader.name).or_insert_with(|| self.module(device, shader)).clone()
        };
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let pipeline = Arc::new(Pipeline { pipeline, layout, label: key.clone() });
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).insert(key, pipeline.clone());
        pipeline
    }
}
