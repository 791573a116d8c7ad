#include "adapters/lora.h"

#include <cmath>
#include <optional>
#include <regex>
#include <set>

#include "lesionflow/io.h"
#include "lesionflow/rng.h"
#include "models/checkpoint.h"
#include "models/generator_io.h"

namespace lf {
using torch::Tensor;

namespace {
std::string last_part(const std::string& name) {
  auto p = name.rfind('.');
  return p == std::string::npos ? name : name.substr(p + 1);
}
// Groups a Linear belongs to, from its name.
std::set<std::string> groups_of(const std::string& name) {
  std::string leaf = last_part(name);
  std::set<std::string> g;
  if (leaf == "qkv" || leaf == "proj") g.insert("attn");
  if (leaf == "mlp1" || leaf == "mlp2") g.insert("mlp");
  if (leaf == "lin1" || leaf == "lin2") g = {"attn", "mlp"};  // single-stream fused projections
  if (leaf == "mod" || leaf == "final_mod") g.insert("mod");
  if (name.rfind("img_in", 0) == 0 || name.rfind("txt_in", 0) == 0 ||
      name.rfind("final_out", 0) == 0 || name.rfind("time_in", 0) == 0 ||
      name.rfind("vec_in", 0) == 0)
    g.insert("io");
  return g;
}
std::map<std::string, torch::nn::Linear> named_linears(MMDiT& model) {
  std::map<std::string, torch::nn::Linear> out;
  for (auto& item : model->named_modules("", false)) {
    auto lin = std::dynamic_pointer_cast<torch::nn::LinearImpl>(item.value());
    if (lin) out.emplace(item.key(), torch::nn::Linear(lin));
  }
  return out;
}
}  // namespace

std::vector<std::pair<std::string, std::string>> lora_targets(MMDiT& model, const LoraSpec& spec) {
  bool text = std::find(spec.targets.begin(), spec.targets.end(), "text") != spec.targets.end();
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& [name, lin] : named_linears(model)) {
    bool is_text = name.rfind("text.", 0) == 0;
    if (is_text && !text) continue;
    auto g = groups_of(name);
    for (auto& t : spec.targets) {
      if (t.rfind("re:", 0) == 0) {
        if (std::regex_search(name, std::regex(t.substr(3)))) {
          out.emplace_back(name, t);
          break;
        }
      } else if (g.count(t)) {
        out.emplace_back(name, t);
        break;
      }
    }
  }
  return out;
}

Result<std::shared_ptr<LoraAdapter>> LoraAdapter::create(MMDiT& model, const LoraSpec& spec) {
  for (auto& t : spec.targets)
    if (t != "attn" && t != "mlp" && t != "mod" && t != "io" && t != "text" &&
        t.rfind("re:", 0) != 0)
      return Status::error("lora: unknown target '" + t +
                           "' (use attn, mlp, mod, io, text or re:<regex>)");
  auto targets = lora_targets(model, spec);
  if (targets.empty())
    return Status::error("lora: the targets select no Linear layer of this model");
  auto lins = named_linears(model);
  auto a = std::make_shared<LoraAdapter>();
  auto gen = at::detail::createCPUGenerator(derive_seed(spec.seed, Stream::kLoraInit));
  for (auto& [name, group] : targets) {
    auto& w = lins.at(name)->weight;
    int r = spec.rank_for.count(group) ? spec.rank_for.at(group) : spec.rank;
    if (r <= 0) return Status::error("lora: rank must be positive (target " + group + ")");
    const int64_t in = w.size(1), out = w.size(0);
    double bound =
        1.0 / std::sqrt(static_cast<double>(in));  // kaiming_uniform(a=sqrt(5)), as nn.Linear
    Module m;
    m.name = name;
    // Drawn on the CPU (seed-exact on every device), then placed beside the weight.
    m.down = (torch::rand({r, in}, gen, torch::kFloat32) * 2 - 1)
                 .mul_(bound)
                 .to(w.device())
                 .requires_grad_(true);
    m.up = torch::zeros({out, r}, w.options().dtype(torch::kFloat32)).requires_grad_(true);
    m.alpha = spec.alpha;
    a->modules_.push_back(std::move(m));
  }
  return a;
}

std::vector<Tensor> LoraAdapter::parameters() const {
  std::vector<Tensor> p;
  for (auto& m : modules_) {
    p.push_back(m.down);
    p.push_back(m.up);
  }
  return p;
}

int64_t LoraAdapter::num_parameters() const {
  int64_t n = 0;
  for (auto& m : modules_) n += m.down.numel() + m.up.numel();
  return n;
}

Status LoraAdapter::save(const std::string& path, const std::string& base_hash, int64_t step,
                         const std::string& extra_json) const {
  SafeTensors st;
  for (auto& m : modules_) {
    st.tensors[m.name + ".lora_down.weight"] = to_raw(m.down.detach());
    st.tensors[m.name + ".lora_up.weight"] = to_raw(m.up.detach());
    st.tensors[m.name + ".alpha"] = to_raw(torch::tensor({static_cast<float>(m.alpha)}));
  }
  st.metadata = {{"format", "lesionflow.lora.v1"},
                 {"base_hash", base_hash},
                 {"step", std::to_string(step)},
                 {"modules", std::to_string(modules_.size())},
                 {"extra", extra_json}};
  LF_RETURN_IF_ERROR(save_safetensors(path, st));
  auto h = hash_file(path);
  if (h.ok()) const_cast<LoraAdapter*>(this)->hash = *h;
  return Status::ok_status();
}

Result<std::shared_ptr<LoraAdapter>> LoraAdapter::load(const std::string& path, MMDiT& model,
                                                       const std::string& base_hash) {
  LF_ASSIGN_OR_RETURN(SafeTensors st, load_safetensors(path));
  if (st.metadata["format"] != "lesionflow.lora.v1")
    return Status::error(path + ": not a lesionflow LoRA adapter (format '" +
                         st.metadata["format"] + "')");
  if (!base_hash.empty() && st.metadata["base_hash"] != base_hash)
    return Status::error(path + ": adapter was trained on base " + st.metadata["base_hash"] +
                         ", not on this base (" + base_hash + "); refusing to apply it");
  auto lins = named_linears(model);
  auto a = std::make_shared<LoraAdapter>();
  for (auto& [key, raw] : st.tensors) {
    const std::string suffix = ".lora_down.weight";
    if (key.size() <= suffix.size() ||
        key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    std::string name = key.substr(0, key.size() - suffix.size());
    auto it = lins.find(name);
    if (it == lins.end())
      return Status::error(path + ": module '" + name + "' does not exist in the base model");
    if (!st.tensors.count(name + ".lora_up.weight") || !st.tensors.count(name + ".alpha"))
      return Status::error(path + ": module '" + name + "' lacks lora_up.weight or alpha");
    Module m;
    m.name = name;
    LF_ASSIGN_OR_RETURN(m.down, from_raw(raw, path + ": " + key));
    LF_ASSIGN_OR_RETURN(m.up, from_raw(st.tensors[name + ".lora_up.weight"], path + ": " + name));
    LF_ASSIGN_OR_RETURN(Tensor alpha, from_raw(st.tensors[name + ".alpha"], path + ": " + name));
    m.alpha = alpha.item<double>();
    const auto& w = it->second->weight;
    if (m.down.dim() != 2 || m.up.dim() != 2 || m.down.size(1) != w.size(1) ||
        m.up.size(0) != w.size(0) || m.up.size(1) != m.down.size(0)) {
      std::ostringstream os;
      os << path << ": shapes of '" << name << "' (down " << m.down.sizes() << ", up "
         << m.up.sizes() << ") do not fit the base weight " << w.sizes();
      return Status::error(os.str());
    }
    m.down = m.down.to(w.device(), torch::kFloat32).requires_grad_(true);
    m.up = m.up.to(w.device(), torch::kFloat32).requires_grad_(true);
    a->modules_.push_back(std::move(m));
  }
  if (a->modules_.empty()) return Status::error(path + ": no LoRA modules in the file");
  auto h = hash_file(path);
  if (h.ok()) a->hash = *h;
  return a;
}

Status LoraRuntime::add(std::shared_ptr<LoraAdapter> a, double strength) {
  auto lins = named_linears(model_);
  for (auto& m : a->modules()) {
    auto it = lins.find(m.name);
    if (it == lins.end()) return Status::error("lora: module '" + m.name + "' not in the model");
    if (!linears_.count(m.name)) {
      linears_.emplace(m.name, it->second);
      // The registered parameter: what the module held before any adapter was applied.
      base_.emplace(m.name, it->second->named_parameters(false)["weight"]);
    }
  }
  adapters_.emplace_back(std::move(a), strength);
  return Status::ok_status();
}

void LoraRuntime::apply(int64_t step) {
  const bool drop = dropout_ > 0 && step >= 0 && torch::GradMode::is_enabled();
  std::optional<at::Generator> gen;
  if (drop)
    gen = at::detail::createCPUGenerator(
        derive_seed(dropout_seed_, Stream::kLoraDropout, static_cast<uint64_t>(step)));
  std::map<std::string, Tensor> w;
  for (auto& [name, b] : base_) w[name] = b;
  for (auto& [a, s] : adapters_)
    for (auto& m : a->modules()) {
      Tensor up = m.up;
      if (drop) {  // B diag(mask) A / (1 - p): drop rank components
        auto keep =
            (torch::rand({m.rank()}, *gen, torch::kFloat32) >= dropout_).to(m.up.options()) /
            (1.0 - dropout_);
        up = up * keep.unsqueeze(0);
      }
      w[m.name] = w[m.name] + (s * m.scale()) * up.mm(m.down);
    }
  for (auto& [name, lin] : linears_) lin->weight = w[name];
}

void LoraRuntime::remove() {
  for (auto& [name, lin] : linears_) lin->weight = base_[name];
}

void LoraRuntime::freeze_base() {
  for (auto& p : model_->parameters()) p.set_requires_grad(false);
}

Status merge_lora(const std::string& base_path,
                  const std::vector<std::pair<std::string, double>>& adapters,
                  const std::string& out_path) {
  LF_ASSIGN_OR_RETURN(LoadedGenerator g, load_generator(base_path));
  std::string merged;
  {
    torch::NoGradGuard ng;
    auto lins = named_linears(g.model);
    for (auto& [path, strength] : adapters) {
      LF_ASSIGN_OR_RETURN(auto a, LoraAdapter::load(path, g.model, g.hash));
      for (auto& m : a->modules())
        lins.at(m.name)->named_parameters(false)["weight"].add_((strength * m.scale()) *
                                                                m.up.mm(m.down));
      merged += (merged.empty() ? "" : ",") + a->hash + ":" + std::to_string(strength);
    }
  }
  return save_generator(out_path, g.model, *g.tok, g.step, g.flow,
                        "merged(" + g.hash + "+" + merged + ")");
}

}  // namespace lf
