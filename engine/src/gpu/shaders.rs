//! Every WGSL source in the engine, embedded at build time from `shaders/`, and the list naga validates.

/// A WGSL module: a name for caching and errors, and its source.
#[derive(Debug, Clone, Copy)]
pub struct ShaderSource {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shader {
    ($name:ident, $file:literal) => {
        pub const $name: ShaderSource =
            ShaderSource { name: $file, source: include_str!(concat!("../../../shaders/", $file)) };
    };
}

shader!(MATMUL, "matmul.wgsl");
shader!(NORM, "norm.wgsl");
shader!(ATTENTION, "attention.wgsl");
shader!(ELEMENTWISE, "elementwise.wgsl");
shader!(MATMUL_WORKGROUP, "matmul_workgroup.wgsl");
shader!(MATMUL_ROWS_SUBGROUP, "matmul_rows_subgroup.wgsl");
shader!(LORA, "lora.wgsl");
shader!(ADAMW, "adamw.wgsl");

/// All shaders, for validation.
pub const ALL: &[ShaderSource] =
    &[MATMUL, NORM, ATTENTION, ELEMENTWISE, MATMUL_WORKGROUP, MATMUL_ROWS_SUBGROUP, LORA, ADAMW];

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and validates every shader with naga, as wgpu would, without a GPU.
    #[test]
    fn every_shader_parses_and_validates() {
        for shader in ALL {
            let module = naga::front::wgsl::parse_str(shader.source)
                .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
            let mut validator = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            );
            validator
                .validate(&module)
                .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
            assert!(!module.entry_points.is_empty(), "{} has no entry point", shader.name);
        }
    }

    /// The training entry points (forward variants that save what a backward needs, and the backwards)
    /// exist in the file of their forward, so the validation above covers them.
    #[test]
    fn backward_entry_points_sit_beside_their_forwards() {
        let expected: &[(&ShaderSource, &[&str])] = &[
            (&NORM, &["rms_norm_train_forward", "rms_norm_backward"]),
            (&ELEMENTWISE, &["swiglu_backward"]),
            (&MATMUL, &["matmul_backward_dx", "matmul_backward_dx_scalar"]),
            (
                &ATTENTION,
                &[
                    "qkv_split_backward",
                    "attn_softmax_lse_forward",
                    "attn_delta_backward",
                    "attn_dscores_backward",
                    "attn_dq_backward",
                    "attn_dkv_backward",
                ],
            ),
        ];
        for (shader, entries) in expected {
            let module = naga::front::wgsl::parse_str(shader.source).expect("parses");
            for entry in *entries {
                assert!(
                    module.entry_points.iter().any(|e| e.name == *entry),
                    "{} lacks the entry point {entry}",
                    shader.name
                );
            }
        }
    }
}
