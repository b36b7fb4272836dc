//! Inference tests in one binary (one link of wgpu + wasmtime instead of twelve): kernels against the
//! plain references, decoders and encoders against independent implementations, GGUF and tokenizer
//! loading, the errors bad inputs must give, and the example programs run end to end.
//! Run one part with e.g. `cargo test -p babelrl --test inference kernels::`.

#[path = "../common/mod.rs"]
mod common;
mod gguf_support;

mod bad_inputs;
mod best_of_n;
mod decoder_tiny;
mod encoder_models;
mod encoder_tiny;
mod eval_cli;
mod eval_metrics;
mod example_programs;
mod fuzz_loaders;
mod fuzz_support;
mod generation;
mod gguf_decoders;
mod gguf_quant;
mod gguf_reader;
mod kernels;
mod kernels_attention_subgroup;
mod kernels_backward;
mod kernels_decode;
mod kernels_dropout;
mod kernels_encoder;
mod kernels_folded_grids;
mod kernels_gpu_family;
mod kernels_lora;
mod kernels_lora_subgroup;
mod kernels_loss;
mod kernels_subgroup;
mod lora_peft;
mod plot_cli;
mod reward_model;
mod reward_train;
mod tokenizer_chat;
mod tokenizer_gguf;
mod train_checkpoint;
mod train_cli;
mod train_cli_grpo;
mod train_cli_lrpo;
mod train_cli_recipe;
mod train_cli_reward;
mod train_cli_services;
mod train_data;
mod train_dpo;
mod train_grpo;
mod train_grpo_loss;
mod train_lora;
mod train_optim;
mod train_shared_prompt;
mod trusted;
