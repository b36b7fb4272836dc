//! The GPU runtime: adapter and device, buffers, cached pipelines, batched kernel launches, readback.

mod batch;
mod check;
pub mod cpu_ref;
mod device;
pub mod kernels;
pub mod kernels_lora;
pub mod kernels_optim;
mod packed;
mod pipeline;
mod profile;
pub mod shaders;
mod tensor;

pub use batch::Batch;
pub use device::{AdapterSummary, Gpu, GpuOptions, KernelProfile, SubgroupMatmulRows, list_adapters};
pub use packed::{PACKED_BLOCK, PackedBlocks, PackedHost, QuantFormat};
pub use profile::KernelTime;
pub use tensor::{BlockedWeight16, Tensor, Weight16};
