//! `babelrl info`: what the engine can see and what it would use.

use babelrl::gpu::{Gpu, GpuOptions, list_adapters};

pub fn run() -> anyhow::Result<()> {
    let options = GpuOptions::from_env();
    let adapters = list_adapters(&options)?;
    if adapters.is_empty() {
        println!("no adapters found");
    }
    for a in &adapters {
        println!(
            "adapter: {} ({:?}, {:?}) driver: {} {}",
            a.name, a.backend, a.device_type, a.driver, a.driver_info
        );
    }
    let gpu = Gpu::new(&options)?;
    let s = &gpu.summary;
    println!("\nselected: {} ({}, {})", s.name, s.backend, s.device_type);
    println!("  kernel profile:           {:?}", gpu.profile);
    println!("  shader-f16:               {}", s.shader_f16);
    println!(
        "  subgroups:                {} (size {}..{})",
        s.subgroups, s.subgroup_size.0, s.subgroup_size.1
    );
    println!("  max buffer:               {} MiB", s.max_buffer_size >> 20);
    println!("  max storage binding:      {} MiB", s.max_storage_binding >> 20);
    println!("  storage buffers / stage:  {}", s.max_storage_buffers_per_stage);
    println!("  invocations / workgroup:  {}", s.max_workgroup_invocations);
    println!("\nchoose with BABELRL_BACKEND=vulkan|metal|dx12 and BABELRL_ADAPTER=<name substring>");
    Ok(())
}
