"""Moving tokens to their experts and back.

One module per strategy: `dense` (every expert on every token), `capacity`
(capacity-bounded buffers), `dropless` (the bucketed-capacity engine and the
sort that ranks choices within experts), `grouped` (sorted rows and the
grouped matmul); `expert_loop` runs the experts one at a time, on stacked
buffers or on sorted rows, where that is faster; `gather` holds the row
gathers whose gradients are gathers; `strategy` is the one place that picks
among them.
"""

from moe_keras.dispatch.capacity import DispatchPlan
from moe_keras.dispatch.capacity import combine_slots
from moe_keras.dispatch.capacity import gather_tokens
from moe_keras.dispatch.capacity import sparse_dispatch_plan
from moe_keras.dispatch.dense import dense_combine
from moe_keras.dispatch.dropless import BUCKET_FACTORS
from moe_keras.dispatch.dropless import SortedChoices
from moe_keras.dispatch.dropless import bucket_capacities
from moe_keras.dispatch.dropless import bucketed_mixture
from moe_keras.dispatch.dropless import sort_by_expert
from moe_keras.dispatch.dropless import sorted_dispatch_plan
from moe_keras.dispatch.expert_loop import loops_over_experts
from moe_keras.dispatch.expert_loop import loops_over_groups
from moe_keras.dispatch.expert_loop import map_experts
from moe_keras.dispatch.expert_loop import map_groups
from moe_keras.dispatch.gather import gather_rows
from moe_keras.dispatch.gather import take_rows
from moe_keras.dispatch.grouped import RowPlan
from moe_keras.dispatch.grouped import batched_blocks_matmul
from moe_keras.dispatch.grouped import block_grouped_matmul
from moe_keras.dispatch.grouped import block_layout
from moe_keras.dispatch.grouped import block_products
from moe_keras.dispatch.grouped import grouped_matmul
from moe_keras.dispatch.grouped import permute
from moe_keras.dispatch.grouped import row_plan
from moe_keras.dispatch.grouped import scanned_blocks_matmul
from moe_keras.dispatch.grouped import sorted_mixture
from moe_keras.dispatch.grouped import take_row_bias
from moe_keras.dispatch.grouped import unpermute
from moe_keras.dispatch.strategy import DISPATCH_MODES
from moe_keras.dispatch.strategy import ROWS_MIN_IMBALANCE
from moe_keras.dispatch.strategy import choose_dispatch
from moe_keras.dispatch.strategy import dropless_engine
from moe_keras.dispatch.strategy import dropless_mixture
from moe_keras.dispatch.strategy import dropless_runs
from moe_keras.dispatch.strategy import static_buffers_run
from moe_keras.dispatch.strategy import supports_xla
