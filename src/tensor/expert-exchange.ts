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
 *
 * Implemented in src/comm/rdep/ (the CPU mesh and CUDA IPC); the interface lives beside the Backend so the model
 * calls it without depending on the transports.
 */
import type { MoePlan } from './backend.ts';
import type { Tensor } from './tensor.ts';

export interface ExpertRoute {
  /** i32 [El + 1]: start row of each local expert's segment among the received rows. */
  readonly offsets: Tensor;
  /**
   * Rows of a dispatched tensor: on the CPU exactly the rows received; on the GPU the worst-case capacity (every
   * rank's rows for this rank's experts), of which only the first offsets[El] hold rows.
   */
  readonly rows: number;
  free(): void;
}

export interface ExpertExchange {
  readonly rank: number;
  readonly world: number;
  /** Phase one, from this rank's MoE plan (its rows per global expert and where each expert's rows start). */
  route(plan: MoePlan): ExpertRoute;
  /**
   * rows [N, D] grouped by global expert -> [route.rows, D] grouped by local expert, then source rank. On the GPU
   * the result is a view of the exchange's shared buffer, held until it is freed (see src/comm/rdep/cuda-ipc.ts).
   */
  dispatch(rows: Tensor, route: ExpertRoute): Tensor;
  /** rows [route.rows, D] in the dispatched layout -> [N, D] in this rank's grouped layout (on the GPU, a view too). */
  combine(rows: Tensor, route: ExpertRoute): Tensor;
}
