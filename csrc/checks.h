// Argument checks shared by every op implementation (CPU and CUDA). Each message names the
// argument (and the list index) so a user can act on it without reading the kernel.
#pragma once
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include <sstream>
#include <string>
#include <vector>

namespace unlearnx {

using torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;

[[noreturn]] inline void fail(const std::string& msg) { throw std::runtime_error("unlearnx: " + msg); }

inline std::string shape_str(const Tensor& t) {
  std::ostringstream os;
  os << "[";
  for (int64_t d = 0; d < t.dim(); ++d) os << (d ? ", " : "") << t.size(d);
  os << "]";
  return os.str();
}

inline std::string item(const char* name, size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

inline void check_same_len(const std::vector<Tensor>& a, const char* an, const std::vector<Tensor>& b,
                           const char* bn) {
  if (a.size() != b.size())
    fail(std::string(bn) + " has " + std::to_string(b.size()) + " tensors but " + an + " has " +
         std::to_string(a.size()));
}

inline void check_same_shape(const Tensor& a, const std::string& an, const Tensor& b, const std::string& bn) {
  bool same = a.dim() == b.dim();
  for (int64_t d = 0; same && d < a.dim(); ++d) same = a.size(d) == b.size(d);
  if (!same) fail(bn + " has shape " + shape_str(b) + " but " + an + " has shape " + shape_str(a));
}

inline void check_contiguous(const Tensor& t, const std::string& name) {
  if (!t.is_contiguous()) fail(name + " must be contiguous (call .contiguous() or use unlearnx.ops, which handles strides)");
}

inline void check_dtype(const Tensor& t, const std::string& name, ScalarType want, const char* want_name) {
  if (t.scalar_type() != want) fail(name + " must be " + want_name);
}

inline void check_same_device(const Tensor& t, const std::string& name, const Tensor& ref, const std::string& ref_name) {
  if (t.get_device() != ref.get_device() || t.is_cuda() != ref.is_cuda())
    fail(name + " is on a different device than " + ref_name);
}

}  // namespace unlearnx
