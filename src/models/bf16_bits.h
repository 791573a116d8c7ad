// bfloat16 data as raw bits, for the torch-free kernels in src/core (*_kernel.h take uint16_t).
// Include only from torch TUs.
#pragma once
#include <cstdint>
#include <type_traits>

#include "lesionflow/runtime.h"

namespace lf {
// Element pointers: c10::BFloat16 -> uint16_t, float stays float (for code templated on both).
template <class T>
struct RawBits {
  using type = T;
};
template <>
struct RawBits<c10::BFloat16> {
  using type = uint16_t;
};
template <class T>
auto raw_bits(T* p) {
  return reinterpret_cast<typename RawBits<std::remove_const_t<T>>::type*>(p);
}
template <class T>
auto raw_bits(const T* p) {
  return reinterpret_cast<const typename RawBits<T>::type*>(p);
}
// A bf16 tensor's data.
inline const uint16_t* bf16_bits(const torch::Tensor& t) {
  return raw_bits(static_cast<const c10::BFloat16*>(t.data_ptr<c10::BFloat16>()));
}
inline uint16_t* bf16_bits_mut(torch::Tensor& t) { return raw_bits(t.data_ptr<c10::BFloat16>()); }
}  // namespace lf
