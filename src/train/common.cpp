#include "train/common.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

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

void backward_with_fresh_grads(const torch::Tensor& loss,
                               const std::vector<torch::Tensor>& params) {
  std::vector<char> had(params.size(), 0);
  for (size_t i = 0; i < params.size(); ++i) {
    had[i] = params[i].grad().defined();
    if (had[i]) params[i].mutable_grad().reset();
  }
  loss.backward();
  for (size_t i = 0; i < params.size(); ++i)
    if (had[i] && !params[i].grad().defined())
      params[i].mutable_grad() = torch::zeros_like(params[i]);
}

void ema_update(std::vector<torch::Tensor>& ema, const std::vector<torch::Tensor>& params,
                double decay) {
  torch::NoGradGuard ng;
  for (size_t i = 0; i < params.size(); ++i) ema[i].mul_(decay).add_(params[i], 1 - decay);
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
