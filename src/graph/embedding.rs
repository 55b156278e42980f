//! Embedding lookup: forward builder and backward rule.

use crate::error::{Error, Result};
use crate::ops::embedding::{self, TokenIds};

use super::{Graph, StageKind, TensorId};

impl Graph {
    /// `table[ids]`: `[ids.shape..., dim]`.
    pub fn embedding(&mut self, name: &str, table: TensorId, ids: &TokenIds) -> Result<TensorId> {
        let ts = self.shape(table).to_vec();
        if ts.len() != 2 || ts[0] != ids.vocab() {
            return Err(Error::shape(
                "embedding",
                "table",
                format!("[{}, dim]", ids.vocab()),
                &ts,
            ));
        }
        let mut shape = ids.shape().to_vec();
        shape.push(ts[1]);
        let out = self.output(name, &shape, &[table]);
        self.input_bytes += 3 * 4 * ids.len() as u64;
        let ids_c = ids.clone();
        self.call(
            false,
            format!("{name}: embedding"),
            vec![table],
            vec![out],
            Box::new(move |ctx, t| {
                Ok(vec![embedding::plan_forward(
                    ctx,
                    t.get(table)?,
                    &ids_c,
                    t.get(out)?,
                    false,
                )?])
            }),
        );
        self.stage(StageKind::Embedding { ids: ids.clone() }, vec![table], out);
        Ok(out)
    }

    /// The table's gradient: the output gradient scattered back to the rows looked up.
    pub(super) fn embedding_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        dy: TensorId,
        ids: &TokenIds,
    ) -> Result<()> {
        let table = inputs[0];
        if let Some((g, accumulate)) = self.grad_target(table) {
            let ids = ids.clone();
            self.call(
                true,
                format!("{label}: embedding backward"),
                vec![dy],
                vec![g],
                Box::new(move |ctx, t| {
                    embedding::plan_backward(ctx, t.get(dy)?, &ids, t.get(g)?, accumulate)
                }),
            );
        }
        Ok(())
    }
}
