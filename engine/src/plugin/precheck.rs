//! Structural limits checked before a component is compiled. Resource limits only apply once a plugin
//! runs; compiling is where a hostile file can hurt the host (Cranelift's cost grows with a function's
//! locals times its blocks: a 4 MB function with tens of thousands of locals made it ask for 26 GB).
//! One linear pass over the section headers and local declarations (no compilation, no validation,
//! which wasmtime does next) refuses components past these limits, naming the limit.

/// Limits on a component's structure, checked before compiling. The defaults leave a wide margin over
/// the largest real plugin measured (a componentize-py component of 18 MB; see docs/plugins-host.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompileLimits {
    /// Functions defined, over all core modules of the component.
    pub(crate) functions: u64,
    /// Bytes of one function body.
    pub(crate) body_bytes: u64,
    /// Locals declared by one function (parameters not counted: wasmparser caps them at 1,000).
    pub(crate) locals: u64,
    /// A function's locals times its body bytes: Cranelift's SSA construction keeps a slot per local
    /// and block, so this product (not either factor) is what makes a function expensive to compile.
    pub(crate) locals_x_body: u64,
    /// Control-flow blocks (`block`, `loop`, `if`, `try_table`) in one function: the compiler's time
    /// grows faster than linearly with them.
    pub(crate) blocks: u64,
    /// Control-flow blocks over all functions of all core modules.
    pub(crate) all_blocks: u64,
    /// Bytes of data segments, over all core modules.
    pub(crate) data_bytes: u64,
    /// Core modules plus nested components.
    pub(crate) modules: u64,
    /// Core and component instantiations written in the component (the store limiter caps the
    /// instances actually created at run time).
    pub(crate) instances: u64,
}

impl CompileLimits {
    pub(crate) const DEFAULT: CompileLimits = CompileLimits {
        functions: 200_000,
        body_bytes: 1 << 20,
        locals: 10_000,
        locals_x_body: 1 << 25,
        blocks: 10_000,
        all_blocks: 1_000_000,
        data_bytes: 64 << 20,
        modules: 100,
        instances: 1_000,
    };
}

/// What the check counted, for messages and measurements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) functions: u64,
    pub(crate) max_body_bytes: u64,
    pub(crate) max_locals: u64,
    pub(crate) max_locals_x_body: u64,
    pub(crate) max_blocks: u64,
    pub(crate) all_blocks: u64,
    pub(crate) data_bytes: u64,
    pub(crate) modules: u64,
    pub(crate) instances: u64,
}

/// Walks the component's sections and refuses it, with a message naming the limit, as soon as one of
/// `limits` is passed. A malformed component gets wasmparser's message.
pub(crate) fn check(bytes: &[u8], limits: &CompileLimits) -> Result<Shape, String> {
    use wasmparser::{Parser, Payload};
    let mut s = Shape::default();
    let over = |what: &str, value: u64, limit: u64| {
        format!("{what} ({value}) exceeds the limit of {limit} checked before compiling")
    };
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("malformed: {e}"))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => {
                s.modules += 1;
                if s.modules > limits.modules {
                    return Err(over(
                        "its number of core modules and nested components",
                        s.modules,
                        limits.modules,
                    ));
                }
            }
            Payload::InstanceSection(r) => s.instances += u64::from(r.count()),
            Payload::ComponentInstanceSection(r) => s.instances += u64::from(r.count()),
            Payload::FunctionSection(r) => {
                s.functions += u64::from(r.count());
                if s.functions > limits.functions {
                    return Err(over("its number of functions", s.functions, limits.functions));
                }
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len() as u64;
                s.max_body_bytes = s.max_body_bytes.max(size);
                if size > limits.body_bytes {
                    return Err(over("a function body's size in bytes", size, limits.body_bytes));
                }
                let mut locals = 0u64;
                for decl in body.get_locals_reader().map_err(|e| format!("malformed: {e}"))? {
                    let (count, _) = decl.map_err(|e| format!("malformed: {e}"))?;
                    locals += u64::from(count);
                    if locals > limits.locals {
                        return Err(over("a function's number of locals", locals, limits.locals));
                    }
                }
                s.max_locals = s.max_locals.max(locals);
                let product = locals * size;
                s.max_locals_x_body = s.max_locals_x_body.max(product);
                if product > limits.locals_x_body {
                    return Err(over(
                        &format!("a function's locals × body bytes ({locals} × {size})"),
                        product,
                        limits.locals_x_body,
                    ));
                }
                let mut blocks = 0u64;
                let mut ops = body.get_operators_reader().map_err(|e| format!("malformed: {e}"))?;
                while !ops.eof() {
                    use wasmparser::Operator::{Block, If, Loop, TryTable};
                    let op = ops.read().map_err(|e| format!("malformed: {e}"))?;
                    if matches!(op, Block { .. } | Loop { .. } | If { .. } | TryTable { .. }) {
                        blocks += 1;
                    }
                }
                s.max_blocks = s.max_blocks.max(blocks);
                if blocks > limits.blocks {
                    return Err(over("a function's number of blocks, loops and ifs", blocks, limits.blocks));
                }
                s.all_blocks += blocks;
                if s.all_blocks > limits.all_blocks {
                    return Err(over("its number of blocks, loops and ifs", s.all_blocks, limits.all_blocks));
                }
            }
            Payload::DataSection(r) => {
                for data in r {
                    let data = data.map_err(|e| format!("malformed: {e}"))?;
                    s.data_bytes += data.data.len() as u64;
                }
                if s.data_bytes > limits.data_bytes {
                    return Err(over("its data segments' size in bytes", s.data_bytes, limits.data_bytes));
                }
            }
            _ => {}
        }
    }
    if s.instances > limits.instances {
        return Err(over("its number of instantiations", s.instances, limits.instances));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_is_named_when_passed() {
        let tight = CompileLimits {
            functions: 0,
            body_bytes: 0,
            locals: 0,
            locals_x_body: 0,
            blocks: 0,
            all_blocks: 0,
            data_bytes: 0,
            modules: 0,
            instances: 0,
        };
        // A component holding one module with one function (one local) and a data segment.
        let module = wat_free_module();
        let err = check(&module, &tight).unwrap_err();
        assert!(err.contains("core modules and nested components (1) exceeds the limit of 0"), "{err}");
        let err = check(&module, &CompileLimits { modules: 1, ..tight }).unwrap_err();
        assert!(err.contains("number of functions (1)"), "{err}");
        let err = check(&module, &CompileLimits { modules: 1, functions: 1, ..tight }).unwrap_err();
        assert!(err.contains("body's size in bytes"), "{err}");
        let loose = CompileLimits { modules: 1, functions: 1, body_bytes: 100, ..tight };
        let err = check(&module, &loose).unwrap_err();
        assert!(err.contains("number of locals (1)"), "{err}");
        let err = check(&module, &CompileLimits { locals: 1, ..loose }).unwrap_err();
        assert!(err.contains("locals × body bytes (1 × "), "{err}");
        let loose = CompileLimits { locals: 1, locals_x_body: 100, ..loose };
        let err = check(&module, &loose).unwrap_err();
        assert!(err.contains("data segments' size in bytes (3)"), "{err}");
        let shape = check(&module, &CompileLimits { data_bytes: 3, ..loose });
        assert_eq!(shape.map(|s| (s.functions, s.max_locals, s.data_bytes)), Ok((1, 1, 3)));
        assert!(
            check(b"\0asm\x0d\0\x01\0\x01\x05", &CompileLimits::DEFAULT)
                .unwrap_err()
                .starts_with("malformed")
        );
    }

    /// A component with one core module: one function `(local i32) nop`, one memory, data "abc".
    fn wat_free_module() -> Vec<u8> {
        let module: &[u8] = &[
            0, b'a', b's', b'm', 1, 0, 0, 0, //
            1, 4, 1, 0x60, 0, 0, // type section: () -> ()
            3, 2, 1, 0, // function section
            5, 3, 1, 0, 1, // memory section: min 1
            12, 1, 1, // data count
            10, 7, 1, 5, 1, 1, 0x7f, 0x01, 0x0b, // code: 1 local i32, nop, end
            11, 9, 1, 0, 0x41, 0, 0x0b, 3, b'a', b'b', b'c', // data "abc" at 0
        ];
        let mut c = b"\0asm\x0d\0\x01\0".to_vec();
        c.push(1); // core module section
        c.push(module.len() as u8);
        c.extend_from_slice(module);
        c
    }
}
