//! The resource limiter of a plugin's store: one byte budget (`memory_mib`) shared by every linear
//! memory and every table the plugin's instances create, for the life of the store (all calls until the
//! next restart), plus caps on how many instances, tables and memories a plugin may create at all.

use wasmtime::ResourceLimiter;

/// Bytes counted per table element. A table slot is one pointer (8 bytes; continuation slots are 16),
/// and wasmtime keeps a growable table in a vector whose capacity may reach twice its length, so 16
/// bytes per element bounds what a table really costs the host.
pub(crate) const TABLE_ELEMENT_BYTES: usize = 16;

/// Core instances one plugin store may create (a Rust guest needs 3–4, a componentize-py one about 20).
pub(crate) const MAX_INSTANCES: usize = 100;
/// Tables over all instances of one plugin store.
pub(crate) const MAX_TABLES: usize = 100;
/// Linear memories over all instances of one plugin store.
pub(crate) const MAX_MEMORIES: usize = 16;

/// What a refused growth asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refused {
    /// A linear memory growth; the total bytes (memories and tables) it would have made.
    Memory { total: usize },
    /// A table growth to `elements` elements; the total bytes (memories and tables) it would have made.
    Table { elements: usize, total: usize },
}

/// Memory cap over all linear memories and tables of one store; remembers the growth it refused.
/// The store lives across calls (until a trap replaces it), so so does the account.
pub(crate) struct MemoryCap {
    max_bytes: usize,
    /// Bytes of all linear memories now.
    memories: usize,
    /// Bytes of all tables now (elements × [`TABLE_ELEMENT_BYTES`]).
    tables: usize,
    /// The last growth refused in the current call.
    pub(crate) refused: Option<Refused>,
}

impl MemoryCap {
    pub(crate) fn new(max_bytes: usize) -> MemoryCap {
        MemoryCap { max_bytes, memories: 0, tables: 0, refused: None }
    }

    /// Bytes of memories and tables the store holds now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.memories.saturating_add(self.tables)
    }

    /// Why the last refused growth was refused, for an error message (`None` when nothing was refused).
    pub(crate) fn refusal(&self, cap_mib: u64) -> Option<String> {
        let mib = |b: usize| b.div_ceil(1 << 20);
        Some(match self.refused? {
            Refused::Memory { total } => format!(
                "exceeded the memory cap of {cap_mib} MiB (tried to grow memory to {} MiB, memory_mib)",
                mib(total)
            ),
            Refused::Table { elements, total } => format!(
                "exceeded the memory cap of {cap_mib} MiB (tried to grow a table to {elements} elements, \
                 {} MiB of memories and tables in all, memory_mib)",
                mib(total)
            ),
        })
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let memories = self.memories.saturating_sub(current).saturating_add(desired);
        let total = memories.saturating_add(self.tables);
        if total > self.max_bytes {
            self.refused = Some(Refused::Memory { total });
            return Ok(false);
        }
        self.memories = memories;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |n: usize| n.saturating_mul(TABLE_ELEMENT_BYTES);
        let tables = self.tables.saturating_sub(bytes(current)).saturating_add(bytes(desired));
        let total = tables.saturating_add(self.memories);
        if total > self.max_bytes {
            self.refused = Some(Refused::Table { elements: desired, total });
            return Ok(false);
        }
        self.tables = tables;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_memories_share_one_budget_across_growths() {
        let mut cap = MemoryCap::new(32 << 20);
        assert!(cap.memory_growing(0, 16 << 20, None).unwrap());
        // 1 Mi elements of a table: 16 MiB, which with the 16 MiB of memory fills the cap exactly.
        assert!(cap.table_growing(0, 1 << 20, None).unwrap());
        assert_eq!(cap.used(), 32 << 20);
        // A second table (or memory) of any size no longer fits.
        assert!(!cap.table_growing(0, 1, None).unwrap());
        assert!(matches!(cap.refused, Some(Refused::Table { elements: 1, .. })));
        assert!(!cap.memory_growing(16 << 20, (16 << 20) + 65536, None).unwrap());
        let text = cap.refusal(32).unwrap();
        assert!(text.contains("exceeded the memory cap of 32 MiB"), "{text}");
        assert_eq!(cap.used(), 32 << 20, "refused growths are not counted");
    }

    #[test]
    fn a_table_growth_counts_only_its_increase() {
        let mut cap = MemoryCap::new(1 << 20);
        assert!(cap.table_growing(0, 1000, None).unwrap());
        assert!(cap.table_growing(1000, 2000, None).unwrap());
        assert_eq!(cap.used(), 2000 * TABLE_ELEMENT_BYTES);
        assert!(!cap.table_growing(2000, (1 << 20) / TABLE_ELEMENT_BYTES + 1, None).unwrap());
    }
}
