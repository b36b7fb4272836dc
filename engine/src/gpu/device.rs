//! Adapter choice and device creation: picks the best adapter (or the one the user names), requests
//! its own limits, detects the features kernels can use, and turns device errors into `Error::Gpu`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::gpu::pipeline::PipelineCache;
use crate::gpu::profile::{DispatchProfile, KernelTime};
use crate::{Error, Result};

/// How to pick an adapter. Every field can also come from the environment (see [`GpuOptions::from_env`]).
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Backend to use: "vulkan", "metal", "dx12" (default: all of them).
    pub backend: Option<String>,
    /// Case-insensitive substring of the adapter name to use (e.g. "llvmpipe", "nvidia").
    pub adapter_name: Option<String>,
    /// Refuse CPU (software) adapters.
    pub require_hardware: bool,
    /// Kernel family to use instead of the adapter's own (`BABELRL_KERNELS=cpu|gpu`): for tests and
    /// for measuring one family on another adapter.
    pub kernels: Option<KernelProfile>,
    /// Do not use subgroup operations even where the adapter has them (`BABELRL_SUBGROUPS=0`).
    pub disable_subgroups: bool,
    /// Time every kernel on its own (`BABELRL_PROFILE=1`; see [`Gpu::take_profile`]). Slow: one
    /// submit and one wait per dispatch.
    pub profile: bool,
    /// Fold launch grids as if the adapter allowed at most this many workgroups per grid dimension
    /// (`BABELRL_MAX_WORKGROUPS`; never above the adapter's own limit): for tests, so that small inputs
    /// take the folded grids that only huge ones (a 151,936-row LM head) need on a real adapter.
    pub max_workgroups_per_dimension: Option<u32>,
    /// Keep naga's runtime bounds checks in every shader module (`BABELRL_SHADER_CHECKS=1`), for
    /// debugging a kernel. By default the engine's own modules are built without them: every launch
    /// checks its buffers' sizes on the host first (see [`crate::gpu::shaders::ShaderSource::trusted`]).
    pub shader_checks: bool,
    /// Row counts from which the CPU family's forward matmul shares weights across a subgroup
    /// (`BABELRL_SUBGROUP_MATMUL_ROWS=ONE,FOUR`; default [`SubgroupMatmulRows::DEFAULT`]): `1,1` sends
    /// every matmul with K % 8 == 0 to the four-rows-per-lane kernel (tests of small shapes), a huge
    /// value keeps the per-lane tile (A/B runs).
    pub subgroup_matmul_rows: Option<SubgroupMatmulRows>,
    /// Keep the per-element LoRA kernels (lora.wgsl) where the broadcast ones (lora_subgroup.wgsl)
    /// would run (`BABELRL_SUBGROUP_LORA=0`): for A/B runs and tests of the fallback. The base
    /// matmuls' choice is unchanged.
    pub per_lane_lora: bool,
    /// Keep the per-lane kernels for forward matmuls of fewer than 5 rows instead of the decode kernels
    /// of matmul_decode.wgsl (`BABELRL_DECODE_MATMUL=0`), for A/B runs. Packed weights then run on
    /// their f16 expansion.
    pub disable_decode_matmul: bool,
}

/// Fewest rows (tokens) for each of the CPU family's subgroup-broadcast forward matmuls
/// (matmul_subgroup.wgsl); fewer rows than both keep the per-lane kernels of matmul.wgsl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubgroupMatmulRows {
    /// `matmul_forward_subgroup_1row`: one row per lane, 8 rows × 8 columns per workgroup.
    pub one_per_lane: usize,
    /// `matmul_forward_subgroup`: four rows per lane, 32 rows × 8 columns per workgroup (fewer loads
    /// per FMA, but shorter inputs spend its lanes on clamped rows). Takes precedence over the above.
    pub four_per_lane: usize,
}

impl SubgroupMatmulRows {
    /// Measured on lavapipe (2 cores, K = 576): the one-row kernel (≈ 17 GFLOP/s on full groups of
    /// 8 rows) passes the per-lane kernels (≈ 10) from 5 rows; the four-row kernel (≈ 24 on full groups
    /// of 32) passes the one-row one at 32 rows and from 48 on (33–47 rows lose up to 15% to it).
    pub const DEFAULT: SubgroupMatmulRows = SubgroupMatmulRows { one_per_lane: 5, four_per_lane: 32 };

    /// `ONE,FOUR` as `BABELRL_SUBGROUP_MATMUL_ROWS` gives them; None unless both are positive numbers.
    fn parse(v: &str) -> Option<Self> {
        let (one, four) = v.split_once(',')?;
        let (one, four) = (one.trim().parse().ok()?, four.trim().parse().ok()?);
        (one > 0 && four > 0).then_some(SubgroupMatmulRows { one_per_lane: one, four_per_lane: four })
    }
}

impl GpuOptions {
    /// Options from `BABELRL_BACKEND` / `WGPU_BACKEND` and `BABELRL_ADAPTER` / `WGPU_ADAPTER_NAME`.
    pub fn from_env() -> Self {
        let var =
            |a: &str, b: &str| std::env::var(a).or_else(|_| std::env::var(b)).ok().filter(|s| !s.is_empty());
        GpuOptions {
            backend: var("BABELRL_BACKEND", "WGPU_BACKEND"),
            adapter_name: var("BABELRL_ADAPTER", "WGPU_ADAPTER_NAME"),
            require_hardware: std::env::var("BABELRL_REQUIRE_GPU").is_ok_and(|v| v == "1"),
            kernels: match std::env::var("BABELRL_KERNELS").as_deref() {
                Ok("cpu") => Some(KernelProfile::Cpu),
                Ok("gpu") => Some(KernelProfile::Gpu),
                _ => None,
            },
            disable_subgroups: std::env::var("BABELRL_SUBGROUPS").is_ok_and(|v| v == "0"),
            profile: std::env::var("BABELRL_PROFILE").is_ok_and(|v| v == "1"),
            max_workgroups_per_dimension: std::env::var("BABELRL_MAX_WORKGROUPS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &u32| n > 0),
            shader_checks: std::env::var("BABELRL_SHADER_CHECKS").is_ok_and(|v| v == "1"),
            subgroup_matmul_rows: std::env::var("BABELRL_SUBGROUP_MATMUL_ROWS")
                .ok()
                .and_then(|v| SubgroupMatmulRows::parse(&v)),
            per_lane_lora: std::env::var("BABELRL_SUBGROUP_LORA").is_ok_and(|v| v == "0"),
            disable_decode_matmul: std::env::var("BABELRL_DECODE_MATMUL").is_ok_and(|v| v == "0"),
        }
    }
}

/// Which family of kernels suits the adapter. Software rasterisers (lavapipe) punish workgroup memory
/// and barriers; GPUs reward them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelProfile {
    /// A CPU adapter: one output per invocation, no shared memory.
    Cpu,
    /// A real GPU.
    Gpu,
}

/// Workgroups per grid dimension: a launch folds past `fold_at` (the adapter's limit, or a lower one
/// from `GpuOptions::max_workgroups_per_dimension`), and no dimension may pass `max` (the adapter's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GridLimit {
    pub(crate) fold_at: u32,
    pub(crate) max: u32,
}

/// What the engine learned about its adapter.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_size: (u32, u32),
    pub max_buffer_size: u64,
    pub max_storage_binding: u64,
    pub max_storage_buffers_per_stage: u32,
    pub max_workgroup_invocations: u32,
}

/// The device every kernel runs on.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    pub profile: KernelProfile,
    pub(crate) pipelines: PipelineCache,
    /// A 16-byte buffer bound where a kernel's optional input is absent.
    pub(crate) dummy: wgpu::Buffer,
    /// Per-kernel times when profiling (`GpuOptions::profile`).
    pub(crate) profiler: Option<DispatchProfile>,
    /// Where launches fold their grids (see `kernels::split_groups`).
    pub(crate) grid_limit: GridLimit,
    /// Kernel launches submitted since the device was opened (see [`Gpu::dispatch_count`]).
    pub(crate) dispatches: AtomicU64,
    /// Where the CPU family's subgroup-broadcast matmuls (matmul_subgroup.wgsl) may run: `Some(the
    /// forward's row thresholds)` on a CPU-family device with subgroups of exactly eight lanes.
    pub(crate) subgroup_matmul: Option<SubgroupMatmulRows>,
    /// Whether the LoRA products share values across a subgroup (lora_subgroup.wgsl): where the
    /// broadcast matmuls run, unless `GpuOptions::per_lane_lora`.
    pub(crate) subgroup_lora: bool,
    /// Whether forward matmuls of T ≤ 4 rows take the decode kernels (matmul_decode.wgsl): where the
    /// subgroup matmuls may run, unless `GpuOptions::disable_decode_matmul`.
    pub(crate) decode_matmul: bool,
    /// Where packed weights are expanded to f16 for the launches that cannot read their blocks (see
    /// `Batch::expand_packed`); grown to the largest expansion so far, shared by every batch.
    pub(crate) weight_scratch: Mutex<Option<wgpu::Buffer>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("adapter", &self.summary.name).field("profile", &self.profile).finish()
    }
}

const NO_ADAPTER_HELP: &str = "no GPU adapter found. babelrl needs a Vulkan, Metal or DX12 driver. \
On Linux without a GPU install Mesa's software Vulkan driver (lavapipe): \
`apt-get install mesa-vulkan-drivers libvulkan1`. `babelrl info` lists the adapters it can see.";

fn parse_backends(name: Option<&str>) -> Result<wgpu::Backends> {
    let Some(name) = name else { return Ok(wgpu::Backends::all()) };
    match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "all" | "primary" => Ok(wgpu::Backends::all()),
        other => Err(Error::Input(format!(
            "unknown backend `{other}` (BABELRL_BACKEND / --backend): use vulkan, metal or dx12"
        ))),
    }
}

fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn new_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see on the chosen backends, best first.
pub fn list_adapters(options: &GpuOptions) -> Result<Vec<wgpu::AdapterInfo>> {
    let instance = new_instance(parse_backends(options.backend.as_deref())?);
    let mut infos: Vec<_> = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .iter()
        .map(|a| a.get_info())
        .collect();
    infos.sort_by_key(|i| type_rank(i.device_type));
    Ok(infos)
}

impl Gpu {
    /// Opens the adapter chosen by `options` (best hardware adapter first, then a CPU adapter).
    pub fn new(options: &GpuOptions) -> Result<Arc<Gpu>> {
        let instance = new_instance(parse_backends(options.backend.as_deref())?);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        if adapters.is_empty() {
            return Err(Error::NoAdapter(NO_ADAPTER_HELP.into()));
        }
        if let Some(want) = &options.adapter_name {
            let want = want.to_lowercase();
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want));
            if adapters.is_empty() {
                return Err(Error::NoAdapter(format!(
                    "no adapter name contains `{want}` (BABELRL_ADAPTER); found: {}",
                    names.join(", ")
                )));
            }
        }
        if options.require_hardware {
            adapters.retain(|a| a.get_info().device_type != wgpu::DeviceType::Cpu);
            if adapters.is_empty() {
                return Err(Error::NoAdapter("only CPU adapters found and BABELRL_REQUIRE_GPU=1".into()));
            }
        }
        adapters.sort_by_key(|a| type_rank(a.get_info().device_type));
        Self::open(adapters.swap_remove(0), options)
    }

    fn open(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Arc<Gpu>> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let mut wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        if options.disable_subgroups {
            wanted.remove(wgpu::Features::SUBGROUP);
        }
        let features = adapter.features() & wanted;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("babelrl"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("requesting a device from adapter `{}` failed: {e}", info.name)))?;

        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }));

        let own =
            if info.device_type == wgpu::DeviceType::Cpu { KernelProfile::Cpu } else { KernelProfile::Gpu };
        let profile = options.kernels.unwrap_or(own);
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_size: (info.subgroup_min_size, info.subgroup_max_size),
            max_buffer_size: limits.max_buffer_size,
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            max_workgroup_invocations: limits.max_compute_invocations_per_workgroup,
        };
        log::info!(
            "adapter: {} ({}, {}), profile {:?}",
            summary.name,
            summary.backend,
            summary.device_type,
            profile
        );
        // The broadcast kernels are written for one subgroup of eight lanes per workgroup: other or
        // varying subgroup sizes (SwiftShader's 4, GPUs' 32 or 64) keep the per-lane kernels.
        let subgroup_matmul =
            (profile == KernelProfile::Cpu && summary.subgroups && summary.subgroup_size == (8, 8))
                .then(|| options.subgroup_matmul_rows.unwrap_or(SubgroupMatmulRows::DEFAULT));
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Arc::new(Gpu {
            device,
            queue,
            summary,
            profile,
            pipelines: PipelineCache::new(options.shader_checks),
            dummy,
            profiler: options.profile.then(DispatchProfile::default),
            grid_limit: {
                let max = limits.max_compute_workgroups_per_dimension.max(1);
                let fold_at = options.max_workgroups_per_dimension.unwrap_or(max).clamp(1, max);
                GridLimit { fold_at, max }
            },
            dispatches: AtomicU64::new(0),
            subgroup_lora: subgroup_matmul.is_some() && !options.per_lane_lora,
            decode_matmul: subgroup_matmul.is_some() && !options.disable_decode_matmul,
            subgroup_matmul,
            weight_scratch: Mutex::new(None),
            errors,
        }))
    }

    /// Returns the first device error raised since the last check, as `Error::Gpu`.
    pub fn check_errors(&self) -> Result<()> {
        let mut errs = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errs.is_empty() {
            return Ok(());
        }
        let msg = errs.join("; ");
        errs.clear();
        Err(Error::Gpu(msg))
    }

    /// Waits until the queue is idle.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        self.check_errors()
    }

    /// Per-kernel wall times recorded since the last call, longest first; empty unless the GPU was
    /// made with `GpuOptions::profile`.
    pub fn take_profile(&self) -> Vec<KernelTime> {
        self.profiler.as_ref().map(DispatchProfile::take).unwrap_or_default()
    }

    /// Kernel launches (compute dispatches, not copies or clears) submitted since the device was opened:
    /// the difference over a forward pass is its dispatch count (`babelrl bench --profile` reports it
    /// per token).
    pub fn dispatch_count(&self) -> u64 {
        self.dispatches.load(Ordering::Relaxed)
    }

    /// Whether the engine's shader modules keep naga's runtime checks (`BABELRL_SHADER_CHECKS=1`); the
    /// attention module always does.
    pub fn shader_checks(&self) -> bool {
        self.pipelines.checked(&crate::gpu::shaders::MATMUL)
    }

    /// `Some(row thresholds)` where the CPU family's matmuls share weights (forward, from those row
    /// counts) and dY values (backward dX) across a subgroup by broadcast; `None` where they keep the
    /// per-lane kernels (no subgroups, subgroups not of exactly eight lanes, or the GPU family).
    pub fn subgroup_matmul_rows(&self) -> Option<SubgroupMatmulRows> {
        self.subgroup_matmul
    }

    /// Whether the LoRA kernels share values across a subgroup by broadcast (lora_subgroup.wgsl): where
    /// [`Gpu::subgroup_matmul_rows`] is Some and `BABELRL_SUBGROUP_LORA=0` is not set; otherwise the
    /// per-element kernels of lora.wgsl run.
    pub fn subgroup_lora(&self) -> bool {
        self.subgroup_lora
    }

    /// Whether forward matmuls of at most four rows take the decode kernels (matmul_decode.wgsl: f16 or
    /// packed weights, activations shared by broadcast): the CPU family with subgroups of eight, unless
    /// `BABELRL_DECODE_MATMUL=0`.
    pub fn decode_matmul(&self) -> bool {
        self.decode_matmul
    }

    /// Largest buffer the engine may bind as one storage binding.
    pub fn max_binding(&self) -> u64 {
        self.summary.max_storage_binding.min(self.summary.max_buffer_size)
    }
}

#[cfg(test)]
mod tests {
    use super::SubgroupMatmulRows;

    #[test]
    fn subgroup_matmul_rows_parse_from_the_environment_form() {
        let rows = |one, four| Some(SubgroupMatmulRows { one_per_lane: one, four_per_lane: four });
        assert_eq!(SubgroupMatmulRows::parse("8,32"), rows(8, 32));
        assert_eq!(SubgroupMatmulRows::parse(" 1 , 1 "), rows(1, 1));
        for bad in ["", "8", "8,", "0,32", "8,0", "a,32", "8;32", "-1,4"] {
            assert_eq!(SubgroupMatmulRows::parse(bad), None, "{bad:?}");
        }
    }
}
