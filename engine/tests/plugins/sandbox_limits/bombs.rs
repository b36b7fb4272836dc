//! Hostile components generated in the test (no committed binaries): a reward plugin that grows a new
//! table on every call, instance/table/memory multipliers appended to it, and compile bombs (a function
//! with very many locals and blocks, a module with very many functions).

use std::path::Path;

use wasm_encoder::{
    BlockType, CodeSection, Component, ComponentSection, ConstExpr, CustomSection, ExportKind, ExportSection,
    Function, FunctionSection, GlobalSection, GlobalType, HeapType, InstanceSection, MemArg, MemorySection,
    MemoryType, Module, ModuleArg, ModuleSection, RefType, TableSection, TableType, TypeSection, ValType,
};

/// Where `score`'s return area and its all-`none` score list live in the guest's memory.
const RET_AREA: u64 = 16;
const ZEROS: i32 = 4096;
/// Start of the bump allocator behind `cabi_realloc`.
const HEAP: i32 = 65536;
const PAGES: u64 = 4;

fn memory(minimum: u64) -> MemoryType {
    MemoryType { minimum, maximum: None, memory64: false, shared: false, page_size_log2: None }
}

fn table(minimum: u64) -> TableType {
    TableType { element_type: RefType::FUNCREF, table64: false, minimum, maximum: None, shared: false }
}

fn mem_arg(offset: u64) -> MemArg {
    MemArg { offset, align: 2, memory_index: 0 }
}

/// The core module of the table bomb: `tables` empty tables; call number k of `score` grows table k by
/// `grow` elements (trapping, as an allocator would, when the growth is refused) and returns `none`
/// for every sample, so every call succeeds while the tables pile up in the live instance.
fn table_bomb_module(tables: u32, grow: i32) -> Module {
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32; 4], [ValType::I32]); // 0: cabi_realloc
    types.ty().function([ValType::I32; 2], [ValType::I32]); // 1: configure and score
    let mut funcs = FunctionSection::new();
    funcs.function(0).function(1).function(1);
    let mut tabs = TableSection::new();
    for _ in 0..tables {
        tabs.table(table(0));
    }
    let mut mems = MemorySection::new();
    mems.memory(memory(PAGES));
    let mut globals = GlobalSection::new();
    let mutable = GlobalType { val_type: ValType::I32, mutable: true, shared: false };
    globals.global(mutable, &ConstExpr::i32_const(HEAP)); // 0: heap top
    globals.global(mutable, &ConstExpr::i32_const(0)); // 1: calls so far
    let mut exports = ExportSection::new();
    exports
        .export("memory", ExportKind::Memory, 0)
        .export("cabi_realloc", ExportKind::Func, 0)
        .export("configure", ExportKind::Func, 1)
        .export("score", ExportKind::Func, 2);
    let mut code = CodeSection::new();

    // cabi_realloc(old, old_size, align, size): bump allocation, 8-byte aligned, never freed.
    let mut realloc = Function::new([]);
    realloc
        .instructions()
        .global_get(0)
        .global_get(0)
        .local_get(3)
        .i32_const(7)
        .i32_add()
        .i32_const(-8)
        .i32_and()
        .i32_add()
        .global_set(0)
        .end();
    code.function(&realloc);

    // configure(ptr, len) -> ok: the return area is zero (the `ok` case).
    let mut configure = Function::new([]);
    configure.instructions().i32_const(RET_AREA as i32 + 64).end();
    code.function(&configure);

    // score(list ptr, list len) -> ok(list of `none`s, as many as samples).
    let mut score = Function::new([]);
    let mut f = score.instructions();
    for t in 0..tables {
        f.global_get(1).i32_const(t as i32).i32_eq().if_(BlockType::Empty);
        f.ref_null(HeapType::FUNC).i32_const(grow).table_grow(t).i32_const(-1).i32_eq();
        f.if_(BlockType::Empty).unreachable().end();
        f.end();
    }
    f.global_get(1).i32_const(1).i32_add().global_set(1);
    f.i32_const(0).i32_const(0).i32_store8(MemArg { offset: RET_AREA, align: 0, memory_index: 0 });
    f.i32_const(0).i32_const(ZEROS).i32_store(mem_arg(RET_AREA + 4));
    f.i32_const(0).local_get(1).i32_store(mem_arg(RET_AREA + 8));
    f.i32_const(RET_AREA as i32).end();
    code.function(&score);

    let mut m = Module::new();
    m.section(&types)
        .section(&funcs)
        .section(&tabs)
        .section(&mems)
        .section(&globals)
        .section(&exports)
        .section(&code);
    m
}

/// A `reward`-world component around [`table_bomb_module`].
pub fn table_bomb(tables: u32, grow: i32) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/wit");
    let (pkg, _) = resolve.push_dir(&wit).expect("parse sdk/wit");
    let world = resolve.select_world(&[pkg], Some("reward")).expect("the reward world");
    let mut core = table_bomb_module(tables, grow).finish();
    wit_component::embed_component_metadata(&mut core, &resolve, world, wit_component::StringEncoding::UTF8)
        .expect("embed the world");
    wit_component::ComponentEncoder::default()
        .module(&core)
        .expect("a core module")
        .validate(true)
        .encode()
        .expect("encode the component")
}

/// `component` with one more core module (`tables` tables, `memories` memories of one page) appended
/// and instantiated `count` times: a component that is small to compile but creates many instances.
pub fn with_instances(mut component: Vec<u8>, count: u32, tables: u32, memories: u32) -> Vec<u8> {
    let modules = wasmparser::Parser::new(0)
        .parse_all(&component)
        .filter(|p| matches!(p, Ok(wasmparser::Payload::ModuleSection { .. })))
        .count() as u32;
    let mut m = Module::new();
    let mut tabs = TableSection::new();
    for _ in 0..tables {
        tabs.table(table(1));
    }
    let mut mems = MemorySection::new();
    for _ in 0..memories {
        mems.memory(memory(1));
    }
    m.section(&tabs).section(&mems);
    ModuleSection(&m).append_to_component(&mut component);
    let mut instances = InstanceSection::new();
    for _ in 0..count {
        instances.instantiate(modules, Vec::<(&str, ModuleArg)>::new());
    }
    instances.append_to_component(&mut component);
    component
}

/// A component holding only `module`.
pub fn component_of(module: &Module) -> Vec<u8> {
    let mut c = Component::new();
    c.section(&ModuleSection(module));
    c.finish()
}

/// One function with `locals` i32 locals and `blocks` empty blocks, then a read of every local: the
/// compiler's SSA construction tracks each local in each block.
pub fn locals_bomb(locals: u32, blocks: u32) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    let mut body = Function::new([(locals, ValType::I32)]);
    let mut f = body.instructions();
    for _ in 0..blocks {
        f.block(BlockType::Empty).end();
    }
    for l in 0..locals {
        f.local_get(l).drop();
    }
    f.end();
    let mut code = CodeSection::new();
    code.function(&body);
    let mut m = Module::new();
    m.section(&types).section(&funcs).section(&code);
    component_of(&m)
}

/// `n` functions, each returning a constant.
pub fn many_functions(n: u32) -> Vec<u8> {
    blocky_functions(n, 0)
}

/// `n` functions, each with `blocks` empty blocks, returning a constant.
pub fn blocky_functions(n: u32, blocks: u32) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    let mut funcs = FunctionSection::new();
    let mut code = CodeSection::new();
    let mut body = Function::new([]);
    let mut f = body.instructions();
    for _ in 0..blocks {
        f.block(BlockType::Empty).end();
    }
    f.i32_const(7).end();
    for _ in 0..n {
        funcs.function(0);
        code.function(&body);
    }
    let mut m = Module::new();
    m.section(&types).section(&funcs).section(&code);
    component_of(&m)
}

/// `component` padded with a custom section to at least `bytes` bytes.
pub fn padded(mut component: Vec<u8>, bytes: usize) -> Vec<u8> {
    let pad = bytes.saturating_sub(component.len());
    let section = CustomSection { name: "padding".into(), data: vec![0u8; pad].into() };
    section.append_to_component(&mut component);
    component
}
