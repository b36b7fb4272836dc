//! Every WGSL source in the engine, embedded at build time from `shaders/`, with the adapter features
//! each needs, whether it may run without naga's runtime checks, and the list naga validates.

/// A WGSL module: a name for caching and errors, its source, and the adapter features it needs.
#[derive(Debug, Clone, Copy)]
pub struct ShaderSource {
    pub name: &'static str,
    pub source: &'static str,
    /// Features the device must have been created with; the kernel family that dispatches the shader
    /// checks them first. Empty for shaders every adapter runs (no f16 types, no subgroup operations).
    pub features: wgpu::Features,
    /// Whether the module may be built without naga's runtime checks (bounds clamping, loop bounding,
    /// guarded integer division; see `pipeline.rs`): every index it computes comes from its launch
    /// parameters and the invocation id, bounded by sizes the launch checks on the host
    /// (`check::need`), or is clamped or range-tested in the shader itself where it comes from a
    /// buffer's contents (token ids, targets, row maps, pooling spans). `false` for a module whose
    /// indices come from buffer contents the kernel cannot check: naga's checks then always stay on.
    pub trusted: bool,
}

macro_rules! shader {
    ($name:ident, $file:literal, $features:expr, $trusted:expr) => {
        pub const $name: ShaderSource = ShaderSource {
            name: $file,
            source: include_str!(concat!("../../../shaders/", $file)),
            features: $features,
            trusted: $trusted,
        };
    };
}

const NONE: wgpu::Features = wgpu::Features::empty();

shader!(MATMUL, "matmul.wgsl", NONE, true);
// The row map of the gathered RMSNorm is clamped to x's rows in the shader.
shader!(NORM, "norm.wgsl", NONE, true);
// Every token's (position, cache slot, key count) in `tok`, the backward's per-slot token ranges and a
// shared prompt's follower slots index the KV caches, the rope table and the score rows. The decoder
// validates them before upload (`Decoder::check_step`), but `Batch::attention` and the other public
// launches take any `tok` tensor, and the kernels do not re-check these values: checks stay on.
shader!(ATTENTION, "attention.wgsl", NONE, false);
// The same `tok` values index attention_subgroup.wgsl's caches: checks stay on there too.
shader!(ATTENTION_SUBGROUP, "attention_subgroup.wgsl", wgpu::Features::SUBGROUP, false);
// Token ids are clamped (embed_rows) or range-tested (embed_rows_add) against the table's rows, log-prob
// targets clamped to the vocabulary, and pooling spans clamped to x's rows, in the shader.
shader!(ELEMENTWISE, "elementwise.wgsl", NONE, true);
shader!(MATMUL_WORKGROUP, "matmul_workgroup.wgsl", NONE, true);
shader!(MATMUL_ROWS_SUBGROUP, "matmul_rows_subgroup.wgsl", wgpu::Features::SUBGROUP, true);
shader!(MATMUL_SUBGROUP, "matmul_subgroup.wgsl", wgpu::Features::SUBGROUP, true);
shader!(MATMUL_DECODE, "matmul_decode.wgsl", wgpu::Features::SUBGROUP, true);
shader!(DEQUANT, "dequant.wgsl", NONE, true);
shader!(LORA, "lora.wgsl", NONE, true);
shader!(LORA_SUBGROUP, "lora_subgroup.wgsl", wgpu::Features::SUBGROUP, true);
shader!(ADAMW, "adamw.wgsl", NONE, true);
// Targets are range-tested against the chunk's vocabulary ids in the shader.
shader!(CROSS_ENTROPY, "cross_entropy.wgsl", NONE, true);

/// Downlevel capabilities every shader may use: `unpack2x16float` (naga's SHADER_FLOAT16_IN_FLOAT32, not
/// the f16 type), which every Vulkan, Metal and DX12 adapter wgpu supports has.
pub const BASELINE_DOWNLEVEL: wgpu::DownlevelFlags = wgpu::DownlevelFlags::SHADER_F16_IN_F32;

/// All shaders, for validation.
pub const ALL: &[ShaderSource] = &[
    MATMUL,
    NORM,
    ATTENTION,
    ATTENTION_SUBGROUP,
    ELEMENTWISE,
    MATMUL_WORKGROUP,
    MATMUL_ROWS_SUBGROUP,
    MATMUL_SUBGROUP,
    MATMUL_DECODE,
    DEQUANT,
    LORA,
    LORA_SUBGROUP,
    ADAMW,
    CROSS_ENTROPY,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and validates `source` as wgpu would on a device created with exactly `features` and only
    /// the baseline downlevel capabilities, without a GPU.
    fn validate(name: &str, source: &str, features: wgpu::Features) -> Result<naga::Module, String> {
        let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
        let mut validator = wgpu_naga_bridge::create_validator(
            features,
            BASELINE_DOWNLEVEL,
            naga::valid::ValidationFlags::all(),
        );
        validator.validate(&module).map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
        Ok(module)
    }

    /// Each shader validates with only the features its kernel family requests from the adapter, so a
    /// shader meant for adapters without subgroups or f16 cannot use them unnoticed.
    #[test]
    fn every_shader_validates_with_only_the_features_it_declares() {
        for shader in ALL {
            let module =
                validate(shader.name, shader.source, shader.features).unwrap_or_else(|e| panic!("{e}"));
            assert!(!module.entry_points.is_empty(), "{} has no entry point", shader.name);
        }
        // Only the subgroup kernels (the GPU family's few-row matmul, the CPU family's attention,
        // broadcast and decode matmuls and LoRA products) need an adapter feature.
        let needing: Vec<_> = ALL.iter().filter(|s| !s.features.is_empty()).map(|s| s.name).collect();
        assert_eq!(
            needing,
            [
                "attention_subgroup.wgsl",
                "matmul_rows_subgroup.wgsl",
                "matmul_subgroup.wgsl",
                "matmul_decode.wgsl",
                "lora_subgroup.wgsl"
            ]
        );
    }

    /// The check has teeth: the workgroup-memory matmul (the GPU family without subgroups) with its tree
    /// reduction swapped for `subgroupAdd` is rejected under its declared features, though it would
    /// pass with every capability on (the old check).
    #[test]
    fn a_subgroup_operation_in_a_shader_without_the_feature_is_rejected() {
        let reduction = "    partial[lid] = acc;";
        assert!(MATMUL_WORKGROUP.source.contains(reduction));
        let mutated = MATMUL_WORKGROUP.source.replace(reduction, "    partial[lid] = subgroupAdd(acc);");
        let err = validate("mutated", &mutated, MATMUL_WORKGROUP.features)
            .expect_err("a subgroup operation must need Features::SUBGROUP");
        assert!(err.to_lowercase().contains("subgroup"), "{err}");
        validate("mutated", &mutated, wgpu::Features::SUBGROUP).unwrap_or_else(|e| panic!("{e}"));
        let mut all = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        );
        let module = naga::front::wgsl::parse_str(&mutated).unwrap();
        assert!(all.validate(&module).is_ok(), "every capability on lets the mutation through");
    }

    /// An f16 type needs `Features::SHADER_F16`: the same check catches a core shader using one.
    #[test]
    fn an_f16_type_in_a_shader_without_the_feature_is_rejected() {
        let line = "    var acc = vec2<f32>(0.0);";
        assert!(MATMUL_WORKGROUP.source.contains(line));
        let mutated = format!(
            "enable f16;\n{}",
            MATMUL_WORKGROUP.source.replacen(
                line,
                "    var acc = vec2<f32>(0.0);\n    let h = f16(acc.x);",
                1
            )
        );
        assert!(validate("mutated", &mutated, MATMUL_WORKGROUP.features).is_err());
        validate("mutated", &mutated, wgpu::Features::SHADER_F16).unwrap_or_else(|e| panic!("{e}"));
    }

    /// The training entry points (forward variants that save what a backward needs, and the backwards)
    /// exist in the file of their forward, so the validation above covers them.
    #[test]
    fn backward_entry_points_sit_beside_their_forwards() {
        let expected: &[(&ShaderSource, &[&str])] = &[
            (&NORM, &["rms_norm_train_forward", "rms_norm_backward"]),
            (&ELEMENTWISE, &["swiglu_backward", "dropout_forward", "dropout_backward"]),
            (&MATMUL, &["matmul_backward_dx", "matmul_backward_dx_scalar"]),
            (
                &MATMUL_SUBGROUP,
                &["matmul_forward_subgroup", "matmul_forward_subgroup_1row", "matmul_backward_dx_subgroup"],
            ),
            (&LORA, &["lora_du_backward", "lora_db_backward", "lora_da_backward", "lora_dx_backward"]),
            (
                &LORA_SUBGROUP,
                &[
                    "lora_down_subgroup",
                    "lora_up_subgroup",
                    "lora_du_subgroup",
                    "lora_db_subgroup",
                    "lora_da_subgroup",
                    "lora_dx_subgroup",
                ],
            ),
            (
                &CROSS_ENTROPY,
                &[
                    "xent_logits_chunk",
                    "xent_online_forward",
                    "xent_finish_forward",
                    "xent_dlogits_backward",
                    "xent_exp_forward",
                    "xent_rescale_forward",
                    "xent_finish_grad_backward",
                    "xent_target_row_backward",
                ],
            ),
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
