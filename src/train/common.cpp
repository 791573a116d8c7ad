#include "train/common.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "core/adamw_kernel.h"
#include "core/bf16_shadow.h"
#include "lesionflow/io.h"
#include "lesionflow/log.h"

namespace lf {
using torch::Tensor;

namespace {
constexpr char kStateMagic[8] = {'L', 'F', 'S', 'T', 'A', 'T', 'E', '1'};
constexpr uint32_t kStateVersion = 1;
}  // namespace

Status save_state(const std::string& path, int64_t step, torch::optim::Optimizer& opt) {
  std::ostringstream os;
  os.write(kStateMagic, 8);
  os.write(reinterpret_cast<const char*>(&kStateVersion), 4);
  os.write(reinterpret_cast<const char*>(&step), 8);
  std::ostringstream ob;
  torch::serialize::OutputArchive ar;
  opt.save(ar);
  ar.save_to(ob);
  std::string b = ob.str();
  uint64_t n = b.size();
  os.write(reinterpret_cast<const char*>(&n), 8);
  os << b;
  return write_file_atomic(path, os.str());
}

Status commit_checkpoint(const std::string& journal, const std::vector<CheckpointFile>& files) {
  std::string list;
  for (size_t i = 0; i < files.size(); ++i) {
    Status st = files[i].write(files[i].path + ".next");
    if (!st.ok()) {  // the old set stays; drop the new files written so far
      for (size_t k = 0; k <= i; ++k) std::remove((files[k].path + ".next").c_str());
      return st;
    }
    list += files[i].path + "\n";
  }
  LF_RETURN_IF_ERROR(write_file_atomic(journal, list));  // from here on the new set wins
  for (const auto& f : files)
    if (std::rename((f.path + ".next").c_str(), f.path.c_str()) != 0)
      return Status::error(f.path + ": cannot rename the new checkpoint file into place");
  std::remove(journal.c_str());
  return Status::ok_status();
}

void remove_stale_temps(const std::vector<std::string>& paths) {
  namespace fs = std::filesystem;
  for (const auto& p : paths) {
    const fs::path path(p);
    const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    const std::string a = path.filename().string() + ".tmp.",
                      b = path.filename().string() + ".next.tmp.";
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string f = e.path().filename().string();
      if (f.rfind(a, 0) == 0 || f.rfind(b, 0) == 0) fs::remove(e.path(), ec);
    }
  }
}

Status recover_checkpoint(const std::string& journal, const std::vector<std::string>& paths) {
  remove_stale_temps(paths);
  if (file_exists(journal)) {
    LF_ASSIGN_OR_RETURN(std::string list, read_file(journal));
    std::istringstream in(list);
    for (std::string p; std::getline(in, p);)
      if (!p.empty() && file_exists(p + ".next") && std::rename((p + ".next").c_str(), p.c_str()))
        return Status::error(p + ": cannot finish the interrupted checkpoint (rename failed)");
    std::remove(journal.c_str());
    log_warn("finished writing a checkpoint that an interruption had left half renamed (" +
             journal + ")");
    return Status::ok_status();
  }
  for (const auto& p : paths) std::remove((p + ".next").c_str());  // an unfinished new set
  return Status::ok_status();
}

Result<int64_t> load_state(const std::string& path, torch::optim::Optimizer& opt) {
  LF_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  if (bytes.size() < 28 || bytes.compare(0, 8, std::string(kStateMagic, 8)) != 0)
    return Status::error(path + ": not a lesionflow training state (bad magic)");
  uint32_t ver;
  int64_t step;
  uint64_t n;
  std::memcpy(&ver, bytes.data() + 8, 4);
  if (ver != kStateVersion)
    return Status::error(path + ": unsupported state version " + std::to_string(ver));
  std::memcpy(&step, bytes.data() + 12, 8);
  std::memcpy(&n, bytes.data() + 20, 8);
  if (28 + n > bytes.size()) return Status::error(path + ": truncated training state");
  std::istringstream is(bytes.substr(28, n));
  try {
    torch::serialize::InputArchive ar;
    ar.load_from(is);
    opt.load(ar);
  } catch (const std::exception& e) {
    return Status::error(path + ": cannot restore optimizer state: " + e.what());
  }
  return step;
}

double warmup_cosine_lr(double lr, int64_t warmup, int64_t steps, double min_frac, int64_t step) {
  if (step < warmup) return lr * (step + 1) / static_cast<double>(warmup);
  double p = static_cast<double>(step - warmup) / std::max<int64_t>(1, steps - warmup);
  p = std::min(1.0, p);
  return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + std::cos(M_PI * p)));
}

void set_lr(torch::optim::Optimizer& opt, double lr) {
  for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
}

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().data().norm(2.0));
  if (norms.empty()) return {};
  auto total = norms.size() == 1 ? norms[0] : torch::stack(norms).norm(2.0);
  auto coef = torch::clamp(max_norm / (total + 1e-6), c10::nullopt, 1.0);
  for (const auto& p : params)
    if (p.grad().defined()) p.grad().data().mul_(coef);
  return total;
}

namespace {
// Drops the parameters' gradients so that a backward writes them fresh; done() gives zeros to
// those that had one and got none, as zero_grad would have left them.
class FreshGrads {
 public:
  explicit FreshGrads(const std::vector<Tensor>& params) : params_(params), had_(params.size()) {
    for (size_t i = 0; i < params_.size(); ++i) {
      had_[i] = params_[i].grad().defined();
      if (had_[i]) params_[i].mutable_grad().reset();
    }
  }
  void done() {
    for (size_t i = 0; i < params_.size(); ++i)
      if (had_[i] && !params_[i].grad().defined())
        params_[i].mutable_grad() = torch::zeros_like(params_[i]);
  }

 private:
  const std::vector<Tensor>& params_;
  std::vector<char> had_;
};
}  // namespace

void backward_with_fresh_grads(const torch::Tensor& loss,
                               const std::vector<torch::Tensor>& params) {
  FreshGrads fresh(params);
  loss.backward();
  fresh.done();
}

Tensor sharded_mean_backward(ShardThreads& shards, int64_t rows,
                             const std::function<Tensor(int64_t, int64_t)>& per_sample,
                             const std::vector<Tensor>& params) {
  if (std::min<int64_t>(shards.shards(), rows) <= 1) {
    Tensor per = per_sample(0, rows);
    backward_with_fresh_grads(per.mean(), params);
    return per.detach();
  }
  FreshGrads fresh(params);
  std::vector<Tensor> parts(shards.shards());
  const int k = shards.run_rows(rows, [&](int s, int64_t lo, int64_t hi) {
    Tensor per = per_sample(lo, hi);
    per.sum().div(rows).backward();
    parts[s] = per.detach();
  });
  parts.resize(k);
  fresh.done();
  return torch::cat(parts, 0);
}

void ema_update(std::vector<torch::Tensor>& ema, const std::vector<torch::Tensor>& params,
                double decay) {
  torch::NoGradGuard ng;
  for (size_t i = 0; i < params.size(); ++i) ema[i].mul_(decay).add_(params[i], 1 - decay);
}

namespace {

// Whether the fused step can run: the state is read and written through raw float pointers.
bool fusable(torch::optim::AdamW& opt, const std::vector<Tensor>& params,
             const std::vector<Tensor>* ema) {
  if (opt.param_groups().size() != 1) return false;
  const auto& group = opt.param_groups()[0];
  if (static_cast<const torch::optim::AdamWOptions&>(group.options()).amsgrad()) return false;
  const auto& gp = group.params();
  if (gp.size() != params.size() || (ema && ema->size() != params.size())) return false;
  auto plain = [](const Tensor& t) {
    return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat32 &&
           t.is_contiguous() && t.layout() == torch::kStrided;
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    if (!p.is_same(gp[i]) || !plain(p)) return false;
    if (ema && (!plain((*ema)[i]) || (*ema)[i].numel() != p.numel())) return false;
    const Tensor& g = p.grad();
    if (g.defined() && (!plain(g) || g.numel() != p.numel())) return false;
  }
  return true;
}

}  // namespace

Tensor clip_adamw_ema_step(torch::optim::AdamW& opt, const std::vector<Tensor>& params,
                           double max_norm, std::vector<Tensor>* ema, double ema_decay) {
  if (!fusable(opt, params, ema)) {
    Tensor norm = clip_grad_norm(params, max_norm);
    opt.step();
    if (ema) ema_update(*ema, params, ema_decay);
    return norm;
  }
  torch::NoGradGuard ng;
  // Work in chunks of up to 64K elements, so that small and large parameters share the threads.
  struct Chunk {
    size_t param;
    int64_t begin, len;
  };
  constexpr int64_t kChunk = 1 << 16;
  std::vector<Chunk> chunks;
  bool any_grad = false;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!params[i].grad().defined()) continue;
    any_grad = true;
    for (int64_t b = 0; b < params[i].numel(); b += kChunk)
      chunks.push_back({i, b, std::min(kChunk, params[i].numel() - b)});
  }
  // Parameters without a gradient are skipped, by the clip and by AdamW alike (their EMA still
  // moves toward them, as ema_update does).
  std::vector<double> partial(chunks.size());
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const Chunk& k = chunks[c];
      partial[c] = sum_squares(params[k.param].grad().data_ptr<float>() + k.begin, k.len);
    }
  });
  // The norm and coefficient in float, as clip_grad_norm computes them from float tensors (a NaN
  // norm gives a NaN coefficient, as torch::clamp does).
  const float total =
      static_cast<float>(std::sqrt(std::accumulate(partial.begin(), partial.end(), 0.0)));
  const float ratio = static_cast<float>(max_norm) / (total + static_cast<float>(1e-6));
  const float coef = ratio > 1.0f ? 1.0f : ratio;

  auto& group = opt.param_groups()[0];
  const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
  const double lr = o.lr(), beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
  std::vector<AdamWStep> scal(params.size());
  std::vector<float*> m(params.size(), nullptr), v(params.size(), nullptr);
  std::vector<uint16_t*> p_bf16(params.size(), nullptr);
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    if (!p.grad().defined()) continue;
    // State as torch::optim::AdamW keeps it (key: the TensorImpl address), created as it does.
    auto& slot = opt.state()[c10::guts::to_string(p.unsafeGetTensorImpl())];
    if (!slot) {
      auto st = std::make_unique<torch::optim::AdamWParamState>();
      st->step(0);
      st->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      st->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      slot = std::move(st);
    }
    auto& st = static_cast<torch::optim::AdamWParamState&>(*slot);
    // The kernel writes through raw pointers: a state of another shape (restored from another
    // model) must stop here, as libtorch's step would, not overrun.
    TORCH_CHECK(st.exp_avg().numel() == p.numel() && st.exp_avg_sq().numel() == p.numel(),
                "AdamW state of parameter ", i, " has ", st.exp_avg().numel(),
                " elements, the parameter ", p.numel(), " (a training state from another model?)");
    if (!st.exp_avg().is_contiguous() || !st.exp_avg_sq().is_contiguous() ||
        st.exp_avg().scalar_type() != torch::kFloat32 ||
        st.exp_avg_sq().scalar_type() != torch::kFloat32) {  // a state restored in another form
      st.exp_avg(st.exp_avg().to(torch::kFloat32).contiguous());
      st.exp_avg_sq(st.exp_avg_sq().to(torch::kFloat32).contiguous());
    }
    st.step(st.step() + 1);
    const double bc1 = 1 - std::pow(beta1, st.step()), bc2 = 1 - std::pow(beta2, st.step());
    AdamWStep& s = scal[i];
    s.grad_scale = coef;
    s.weight_keep = static_cast<float>(1 - lr * o.weight_decay());
    s.beta1 = static_cast<float>(beta1);
    s.one_minus_beta1 = static_cast<float>(1 - beta1);
    s.beta2 = static_cast<float>(beta2);
    s.one_minus_beta2 = static_cast<float>(1 - beta2);
    s.sqrt_bias2 = static_cast<float>(std::sqrt(bc2));
    s.eps = static_cast<float>(o.eps());
    s.neg_step_size = static_cast<float>(-lr / bc1);
    s.ema_keep = static_cast<float>(ema_decay);
    s.ema_take = static_cast<float>(1 - ema_decay);
    m[i] = st.exp_avg().data_ptr<float>();
    v[i] = st.exp_avg_sq().data_ptr<float>();
    // The kernel writes p through raw pointers: its version counter is bumped here, and a kept
    // bf16 copy of p (core/bf16_shadow.h) is written in the same pass.
    p_bf16[i] = bf16_shadow_for_update(p);
  }
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const Chunk& k = chunks[c];
      const size_t i = k.param;
      float* e = ema ? (*ema)[i].data_ptr<float>() + k.begin : nullptr;
      adamw_ema_update(params[i].data_ptr<float>() + k.begin,
                       params[i].grad().data_ptr<float>() + k.begin, m[i] + k.begin, v[i] + k.begin,
                       e, p_bf16[i] ? p_bf16[i] + k.begin : nullptr, k.len, scal[i]);
    }
  });
  if (ema)  // parameters without a gradient: the EMA still follows them
    for (size_t i = 0; i < params.size(); ++i)
      if (!params[i].grad().defined()) (*ema)[i].mul_(ema_decay).add_(params[i], 1 - ema_decay);
  if (!any_grad) return {};
  return torch::tensor(total);
}

torch::Device module_device(const torch::nn::Module& m) {
  auto ps = m.parameters();
  return ps.empty() ? torch::Device(torch::kCPU) : ps.front().device();
}

std::vector<int64_t> BatchPlan::at(int64_t step) {
  std::vector<int64_t> out(B_);
  for (int i = 0; i < B_; ++i) {
    int64_t g = step * B_ + i, e = g / n_;
    if (e != epoch_) {
      perm_.resize(n_);
      std::iota(perm_.begin(), perm_.end(), 0);
      std::mt19937_64 rng(seed_ * 7919 + e);
      std::shuffle(perm_.begin(), perm_.end(), rng);
      epoch_ = e;
    }
    out[i] = perm_[g % n_];
  }
  return out;
}

Tensor augment_dihedral(Tensor x, std::mt19937_64& rng) {  // x: [C,H,W]
  std::uniform_int_distribution<int> d4(0, 3), d2(0, 1);
  int k = d4(rng);
  if (k) x = torch::rot90(x, k, {1, 2});
  if (d2(rng)) x = torch::flip(x, {2});
  return x;
}

Tensor dihedral(const Tensor& x, int k) {
  const int64_t d = x.dim();
  Tensor y = k % 4 ? torch::rot90(x, k % 4, {d - 2, d - 1}) : x;
  return k >= 4 ? torch::flip(y, {d - 1}) : y;
}

void append_line(const std::string& path, const std::string& line) {
  std::ofstream f(path, std::ios::app);
  f << line << '\n';
}

// Keep only metrics up to `step` (resume rewinds the log to the checkpoint).
void truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      if (nlohmann::json::parse(line).value("step", int64_t{0}) <= step) kept += line + "\n";
    } catch (...) {
    }
  }
  in.close();
  (void)write_file_atomic(path, kept);
}

}  // namespace lf
