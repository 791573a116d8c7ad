// Status and Result<T>: library errors are values, never exit() or exceptions
// across module boundaries. Messages name the file and the problem.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace lf {

class Status {
 public:
  Status() = default;  // OK
  static Status ok_status() { return Status(); }
  static Status error(std::string msg) { return Status(std::move(msg)); }
  bool ok() const { return !msg_.has_value(); }
  const std::string& message() const {
    static const std::string kOk = "ok";
    return msg_ ? *msg_ : kOk;
  }
  // Prefix context ("while reading X: ...").
  Status with_context(const std::string& ctx) const {
    return ok() ? *this : Status(ctx + ": " + *msg_);
  }

 private:
  explicit Status(std::string m) : msg_(std::move(m)) {}
  std::optional<std::string> msg_;
};

template <class T>
class Result {
 public:
  Result(T v) : v_(std::move(v)) {}       // NOLINT (implicit by design)
  Result(Status s) : v_(std::move(s)) {}  // NOLINT
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T operator*() && { return std::move(*this).value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace lf

#define LF_CONCAT_INNER(a, b) a##b
#define LF_CONCAT(a, b) LF_CONCAT_INNER(a, b)
// Return the Status if it is an error.
#define LF_RETURN_IF_ERROR(expr)     \
  do {                               \
    ::lf::Status lf_st_ = (expr);    \
    if (!lf_st_.ok()) return lf_st_; \
  } while (0)
// lhs = value of a Result, or return its Status.
#define LF_ASSIGN_OR_RETURN(lhs, expr)                                                  \
  auto LF_CONCAT(lf_res_, __LINE__) = (expr);                                           \
  if (!LF_CONCAT(lf_res_, __LINE__).ok()) return LF_CONCAT(lf_res_, __LINE__).status(); \
  lhs = std::move(LF_CONCAT(lf_res_, __LINE__)).value()
