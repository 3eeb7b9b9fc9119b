/**
 * RDEP, expert parallelism by direct dispatch and return: the interface the MoE layer uses when its experts are
 * split over ranks (rank r owns global experts [r*El, (r+1)*El), El = E / world).
 *
 * The MoE layer groups its routed rows by global expert, so the rows for rank j's experts are one contiguous block.
 * `route` is phase one of the two-phase count/offset scheme: every rank learns how many rows each rank sends to
 * each of its experts, which fixes where every row lands — grouped by local expert, then by source rank, then in
 * the source's order. Placement is a function of the routing alone, never of arrival order, so runs are bitwise
 * repeatable. `dispatch` moves rows to their experts' owners and `combine` returns them to where they came from;
 * the backward pass uses the same two moves with the same route (dispatch for output gradients, combine for input
 * gradients). The gate-weighted sum over a token's K slots happens back on its own rank, in slot order (fp32).
 */
import type { Tensor } from '../../tensor/tensor.ts';

export interface ExpertRoute {
  /** i32 [El + 1]: start row of each local expert's segment among the received rows. */
  readonly offsets: Tensor;
  /** Rows this rank receives (the sum of the segments). */
  readonly rows: number;
  free(): void;
}

export interface ExpertExchange {
  readonly rank: number;
  readonly world: number;
  /** `counts` i32 [E]: this rank's rows per global expert (its MoE plan's counts). */
  route(counts: Tensor): ExpertRoute;
  /** rows [N, D] grouped by global expert -> [route.rows, D] grouped by local expert, then source rank. */
  dispatch(rows: Tensor, route: ExpertRoute): Tensor;
  /** rows [route.rows, D] in the dispatched layout -> [N, D] in this rank's grouped layout. */
  combine(rows: Tensor, route: ExpertRoute): Tensor;
}
