// See bf16_shadow.h.
#include <mutex>
#include <unordered_map>

#include "core/bf16_shadow.h"

namespace lf {
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
struct Shadow {
  explicit Shadow(const Tensor& w) : owner(w.getIntrusivePtr()) {}
  WeakImpl owner;
  Tensor copy;  // bf16, w's shape, contiguous
  uint32_t version = 0;
  const void* data = nullptr;
};

std::mutex mu;
uint64_t casts = 0;  // copies made (under mu)
std::unordered_map<const c10::TensorImpl*, Shadow>& shadows() {
  static auto* m = new std::unordered_map<const c10::TensorImpl*, Shadow>();
  return *m;
}

// s was made for w as it is now laid out: w's TensorImpl (still alive, not a new tensor at a
// freed one's address), data and shape. (Whether its values are current is the version's test.)
bool made_for(const Shadow& s, const Tensor& w) {
  auto strong = s.owner.lock();
  return strong.get() == w.unsafeGetTensorImpl() && s.data == w.data_ptr() &&
         s.copy.sizes() == w.sizes();
}

void drop_dead() {  // caller holds mu
  auto& m = shadows();
  for (auto it = m.begin(); it != m.end();) it = it->second.owner.expired() ? m.erase(it) : ++it;
}

bool keepable(const Tensor& w) {
  return w.defined() && w.scalar_type() == torch::kFloat32 && w.device().is_cpu() &&
         w.is_contiguous() && !w.grad_fn() && !w.is_inference();
}

// The current copy of w, made or refreshed as needed.
Tensor current_copy(const Tensor& w) {
  std::lock_guard<std::mutex> lock(mu);
  auto& m = shadows();
  const uint32_t version = w._version();
  auto it = m.find(w.unsafeGetTensorImpl());
  if (it != m.end() && made_for(it->second, w) && it->second.version == version)
    return it->second.copy;
  if (it == m.end() && m.size() % 64 == 63) drop_dead();
  Shadow s(w);
  // A new tensor, not an in-place refresh: a graph that still holds the old copy keeps it.
  s.copy = w.detach().to(torch::kBFloat16);
  ++casts;
  s.version = version;
  s.data = w.data_ptr();
  Tensor c = s.copy;
  m.insert_or_assign(w.unsafeGetTensorImpl(), std::move(s));
  return c;
}

// Forward: the kept copy (an alias, so that the graph's node is not attached to the cache's
// tensor); backward: the gradient cast to float32, as ToCopyBackward does.
struct Bf16WeightFn : public torch::autograd::Function<Bf16WeightFn> {
  static Tensor forward(AutogradContext*, const Tensor& w) { return current_copy(w).alias(); }
  static tensor_list backward(AutogradContext*, tensor_list grads) {
    return {grads[0].to(torch::kFloat32)};
  }
};

}  // namespace

Tensor bf16_weight(const Tensor& w) {
  if (!keepable(w)) return w.to(torch::kBFloat16);
  if (w.requires_grad() && torch::autograd::GradMode::is_enabled()) return Bf16WeightFn::apply(w);
  return current_copy(w);
}

uint16_t* bf16_shadow_for_update(const Tensor& w) {
  w.unsafeGetTensorImpl()->bump_version();
  std::lock_guard<std::mutex> lock(mu);
  auto& m = shadows();
  auto it = m.find(w.unsafeGetTensorImpl());
  if (it == m.end() || !keepable(w) || !made_for(it->second, w)) return nullptr;
  // Whoever holds the old copy (a graph not yet run backward) would see it change: give the
  // writer a fresh one unless the kept copy is referenced only here.
  if (it->second.copy.storage().use_count() > 1)
    it->second.copy = torch::empty_like(it->second.copy);
  it->second.version = w._version();
  return reinterpret_cast<uint16_t*>(it->second.copy.data_ptr<at::BFloat16>());
}

Bf16ShadowStats bf16_shadow_stats() {
  std::lock_guard<std::mutex> lock(mu);
  drop_dead();
  return {shadows().size(), casts};
}

}  // namespace lf
