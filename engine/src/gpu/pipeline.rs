//! Shader modules and compute pipelines, built once per (shader, entry point, constants) and cached.

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
#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<String, Arc<Pipeline>>>,
}

impl PipelineCache {
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
            modules
                .entry(shader.name)
                .or_insert_with(|| {
                    device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name),
                        source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                    })
                })
                .clone()
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
