// The autograd of the pLSTM ops, written once for all three families (scan, closed form,
// node scan), and the parts of their schemas they share.
//
// Every forward op takes   (PLSTM_INPUTS, [Tensor? carry], Tensor[] schedule, [flags...])
// and returns `out` or (out, states); its backward op takes
//                          (grad_out, PLSTM_INPUTS, [Tensor? carry], [Tensor? states], schedule)
// and returns PLSTM_GRADS (and grad_carry, empty when there is no carry). An op family says
// which of the bracketed parts it has; the Autograd kernel below works on the boxed argument
// stack, so no argument list is spelled out again here.
//
// In C++ rather than through torch.library.register_autograd: on a batch of molecules the
// whole op takes a few hundred microseconds, and a Python autograd wrapper costs a sizeable
// part of that on every forward and backward.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#define PLSTM_INPUTS                                                                     \
  "Tensor query, Tensor key, Tensor value, Tensor source, Tensor transition, Tensor mark, " \
  "Tensor direct"
#define PLSTM_GRADS                                                                      \
  "Tensor grad_query, Tensor grad_key, Tensor grad_value, Tensor grad_source, "          \
  "Tensor grad_transition, Tensor grad_mark, Tensor grad_direct"

namespace plstm_graph {

constexpr size_t kNumInputs = 7;  // query, key, value, source, transition, mark, direct

// Family: a struct (PLSTM_OP_FAMILY below writes it) with
//   static constexpr const char* forward, *backward;  // "plstm_graph::scan_forward", ...
//   static constexpr bool has_carry;   // a `Tensor? carry` follows the inputs
//   static constexpr bool has_states;  // forward returns (out, states); backward takes them
template <typename Family>
class PlstmFunction : public torch::autograd::Function<PlstmFunction<Family>> {
 public:
  using variable_list = torch::autograd::variable_list;

  // `inputs`: the seven float inputs and the carry if one was given (all differentiable);
  // `flags`: the arguments after the schedule.
  static variable_list forward(torch::autograd::AutogradContext* ctx, at::TensorList inputs,
                               const std::vector<at::Tensor>& schedule,
                               const std::vector<c10::IValue>& flags) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const c10::OperatorHandle op =
        c10::Dispatcher::singleton().findSchemaOrThrow(Family::forward, "");
    torch::jit::Stack stack(inputs.begin(), inputs.begin() + kNumInputs);
    if (Family::has_carry) {
      stack.emplace_back(inputs.size() > kNumInputs ? c10::IValue(inputs[kNumInputs])
                                                    : c10::IValue());
    }
    stack.emplace_back(schedule);
    stack.insert(stack.end(), flags.begin(), flags.end());
    op.callBoxed(&stack);
    variable_list outputs = {stack[0].toTensor()};
    variable_list saved(inputs.begin(), inputs.end());
    // (the scan returns an empty tensor when it keeps no states: backward recomputes them)
    bool kept = false;
    if (Family::has_states) {
      const at::Tensor states = stack[1].toTensor();
      kept = states.dim() == 4;
      outputs.push_back(states);
      saved.push_back(states);
      ctx->mark_non_differentiable({states});
    }
    saved.insert(saved.end(), schedule.begin(), schedule.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["inputs"] = static_cast<int64_t>(inputs.size());
    ctx->saved_data["kept"] = kept;
    // no zero tensor for the gradient of `states` on every backward
    ctx->set_materialize_grads(false);
    return outputs;
  }

  static variable_list backward(torch::autograd::AutogradContext* ctx,
                                variable_list grad_outputs) {
    const size_t n = static_cast<size_t>(ctx->saved_data["inputs"].toInt());
    variable_list grads(n + 2);  // the inputs, schedule, flags
    const at::Tensor& dy = grad_outputs[0];
    if (!dy.defined()) return grads;
    const variable_list s = ctx->get_saved_variables();
    static const c10::OperatorHandle op =
        c10::Dispatcher::singleton().findSchemaOrThrow(Family::backward, "");
    torch::jit::Stack stack = {dy.contiguous()};
    stack.insert(stack.end(), s.begin(), s.begin() + kNumInputs);
    if (Family::has_carry) stack.emplace_back(n > kNumInputs ? c10::IValue(s[kNumInputs])
                                                             : c10::IValue());
    size_t next = n;
    if (Family::has_states) {
      stack.emplace_back(ctx->saved_data["kept"].toBool() ? c10::IValue(s[next])
                                                          : c10::IValue());
      ++next;
    }
    stack.emplace_back(std::vector<at::Tensor>(s.begin() + next, s.end()));
    op.callBoxed(&stack);
    for (size_t i = 0; i < n; ++i) grads[i] = stack[i].toTensor();
    return grads;
  }
};

// The Autograd kernel of Family's forward op, on the boxed stack of its schema.
template <typename Family>
void autograd_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet,
                     torch::jit::Stack* stack) {
  const size_t num_args = op.schema().arguments().size();
  size_t i = stack->size() - num_args;  // the arguments are the last num_args entries
  const size_t end = i + kNumInputs;
  std::vector<at::Tensor> inputs;
  for (; i < end; ++i) inputs.push_back((*stack)[i].toTensor());
  if (Family::has_carry) {
    const c10::IValue& carry = (*stack)[i++];
    if (carry.isTensor() && carry.toTensor().defined()) inputs.push_back(carry.toTensor());
  }
  std::vector<at::Tensor> schedule = (*stack)[i++].toTensorVector();
  std::vector<c10::IValue> flags(stack->begin() + i, stack->end());
  auto outputs = PlstmFunction<Family>::apply(at::TensorList(inputs), schedule, flags);
  torch::jit::drop(*stack, num_args);
  stack->insert(stack->end(), outputs.begin(), outputs.end());
}

template <typename Family>
torch::CppFunction autograd_function() {
  return torch::CppFunction::makeFromBoxedFunction<&autograd_kernel<Family>>();
}

}  // namespace plstm_graph

// One op family, declared once: its trait struct FAMILY (the name autograd nodes show, e.g.
// PlstmFunction<ScanOp>), the two schemas of the ops NAME_forward / NAME_backward (FORWARD and
// BACKWARD are what follows the op name: "(arguments) -> returns") and the Autograd kernel of
// the forward op.
#define PLSTM_OP_FAMILY(FAMILY, NAME, HAS_CARRY, HAS_STATES, FORWARD, BACKWARD)      \
  namespace plstm_graph {                                                            \
  namespace {                                                                        \
  struct FAMILY {                                                                    \
    static constexpr const char* forward = "plstm_graph::" #NAME "_forward";         \
    static constexpr const char* backward = "plstm_graph::" #NAME "_backward";       \
    static constexpr bool has_carry = HAS_CARRY;                                     \
    static constexpr bool has_states = HAS_STATES;                                   \
  };                                                                                 \
  }                                                                                  \
  }                                                                                  \
  TORCH_LIBRARY_FRAGMENT(plstm_graph, m) {                                           \
    m.def(#NAME "_forward" FORWARD);                                                 \
    m.def(#NAME "_backward" BACKWARD);                                               \
  }                                                                                  \
  TORCH_LIBRARY_IMPL(plstm_graph, Autograd, m) {                                     \
    m.impl(#NAME "_forward",                                                         \
           plstm_graph::autograd_function<plstm_graph::FAMILY>());                   \
  }
