// Classifier training (see classifier.h): augmentation, class-balanced loss, per-source
// weights, early stopping on validation AUC, exact resume.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "classify/classifier.h"
#include "data/images_torch.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/metrics.h"
#include "lesionflow/rng.h"
#include "lesionflow/shift.h"
#include "models/checkpoint.h"
#include "train/common.h"

namespace lf {
using torch::Tensor;

nlohmann::json ClsTrainConfig::to_json() const {
  return {{"epochs", epochs},
          {"batch", batch},
          {"lr", lr},
          {"weight_decay", weight_decay},
          {"warmup_epochs", warmup_epochs},
          {"balanced", balanced},
          {"augment", augment},
          {"shift_augment", shift_augment},
          {"patience", patience},
          {"max_minutes", max_minutes},
          {"seed", seed},
          {"out", out},
          {"device", device.str()},
          {"world_size", dist ? dist->world() : 1}};
}

namespace {

// A double as checkpoint metadata that reads back bit-exact (std::to_string keeps 6 decimals, so a
// run resumed after its best epoch reported val_auc 0.730769 where the uninterrupted one had
// 0.7307692307692307).
std::string exact(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}
// Random resized crop (scale 0.7-1, aspect 3/4-4/3), dihedral transform, colour jitter
// (brightness, contrast, saturation +-15%) on one image x [3,S,S] in [-1,1].
Tensor augment_lesion(Tensor x, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> U(0, 1);
  const int64_t S = x.size(1);
  double scale = 0.7 + 0.3 * U(rng),
         ar = std::exp(std::log(0.75) + (std::log(4.0 / 3) - std::log(0.75)) * U(rng));
  int64_t w = std::clamp<int64_t>(std::lround(S * std::sqrt(scale * ar)), 8, S);
  int64_t h = std::clamp<int64_t>(std::lround(S * std::sqrt(scale / ar)), 8, S);
  int64_t x0 = static_cast<int64_t>(U(rng) * (S - w + 1)),
          y0 = static_cast<int64_t>(U(rng) * (S - h + 1));
  x = x.slice(1, y0, y0 + h).slice(2, x0, x0 + w).unsqueeze(0);
  x = torch::nn::functional::interpolate(x, torch::nn::functional::InterpolateFuncOptions()
                                                .size(std::vector<int64_t>{S, S})
                                                .mode(torch::kBilinear)
                                                .align_corners(false))
          .squeeze(0);
  x = augment_dihedral(x, rng);
  auto p = (x + 1) * 0.5;
  double b = 1 + 0.3 * (U(rng) - 0.5), c = 1 + 0.3 * (U(rng) - 0.5), s = 1 + 0.3 * (U(rng) - 0.5);
  p = p * b;
  auto mean = p.mean();
  p = (p - mean) * c + mean;
  auto grey = p.mean(0, true);
  p = (p - grey) * s + grey;
  return p.clamp(0, 1) * 2 - 1;
}

Tensor batch_tensor(const ClassifierConfig& c, const LabeledSet& set,
                    const std::vector<int64_t>& idx) {
  std::vector<const uint8_t*> px;
  for (auto i : idx) px.push_back(set.image(i));
  return classifier_input(c, px, set.size);
}
}  // namespace

Tensor classifier_loss(Classifier& model, const Tensor& x, const Tensor& y, const Tensor& w) {
  const auto dev = module_device(*model);
  auto wt = w.to(dev);
  auto per = torch::nn::functional::cross_entropy(
      model->forward(x.to(dev)), y.to(dev),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  return (per * wt).sum() / wt.sum();
}

Result<ClsTrainResult> train_classifier(const ClsTrainConfig& cfg, Classifier& model,
                                        const LabeledSet& train, const LabeledSet& val) {
  if (train.count() < 2) return Status::error("classify: fewer than 2 training images");
  if (cfg.out.empty()) return Status::error("classify: an output directory is required");
  if (train.size != model->config().image_size)
    return Status::error("classify: images are " + std::to_string(train.size) +
                         "px, the model expects " + std::to_string(model->config().image_size) +
                         "px");
  Dist* dist = cfg.dist.get();
  const bool main_rank = is_main_rank(cfg.dist);
  int64_t shard_lo = 0, shard_hi = cfg.batch;
  if (dist) {
    LF_ASSIGN_OR_RETURN(std::tie(shard_lo, shard_hi),
                        batch_shard(cfg.batch, dist->rank(), dist->world()));
  }
  if (main_rank) LF_RETURN_IF_ERROR(make_dirs(cfg.out));
  const std::string last = cfg.out + "/last.safetensors", best = cfg.out + "/best.safetensors",
                    state = cfg.out + "/state.bin", hist = cfg.out + "/history.jsonl";
  const int64_t N = train.count();
  const int64_t steps_per_epoch = std::max<int64_t>(1, N / cfg.batch);
  const int64_t total_steps = steps_per_epoch * cfg.epochs;
  // Targets: benign/malignant, or the dx class of a multi-class model. Class weights (balanced,
  // N / (K N_c)) times source weights.
  const int K = model->config().outputs();
  const bool multi = !model->config().classes.empty();
  std::vector<int> target(N);
  for (int64_t i = 0; i < N; ++i) {
    target[i] = multi ? train.cls[i] : train.labels[i];
    if (target[i] < 0 || target[i] >= K)
      return Status::error("classify: training image '" + train.ids[i] +
                           "' has no class among the model's " + std::to_string(K) + " outputs");
  }
  std::vector<double> count(K, 0.0);
  for (int y : target) count[y] += 1;
  std::vector<float> sample_w(N);
  for (int64_t i = 0; i < N; ++i)
    sample_w[i] =
        train.weights[i] * static_cast<float>(cfg.balanced ? N / (K * count[target[i]]) : 1.0);

  model->to(cfg.device);
  auto params = model->parameters();
  auto buffers = model->buffers();
  if (dist) {  // one initialisation for every rank
    LF_RETURN_IF_ERROR(dist->broadcast(params));
    LF_RETURN_IF_ERROR(dist->broadcast(buffers));
  }
  torch::optim::AdamW opt(params,
                          torch::optim::AdamWOptions(cfg.lr).weight_decay(cfg.weight_decay));
  ClsTrainResult res;
  res.selected_on = multi ? "val_balanced_accuracy" : "val_auc";
  int epoch = 0, since_best = 0;
  const std::string journal = cfg.out + "/checkpoint.journal";
  if (main_rank) {
    LF_RETURN_IF_ERROR(recover_checkpoint(journal, {last, state}));
    remove_stale_temps({best});
  }
  if (dist) LF_RETURN_IF_ERROR(dist->barrier());
  if (cfg.resume && file_exists(state)) {
    LF_ASSIGN_OR_RETURN(SafeTensors w, load_safetensors(last));
    LF_RETURN_IF_ERROR(load_classifier_weights(w, model, last));
    LF_ASSIGN_OR_RETURN(int64_t e, load_state(state, opt));
    epoch = static_cast<int>(e);
    res.best_epoch = std::atoi(w.metadata["best_epoch"].c_str());
    // best_val_auc: checkpoints from before dx models selected on balanced accuracy
    const auto bv =
        w.metadata.count("best_val") ? w.metadata["best_val"] : w.metadata["best_val_auc"];
    res.best_val = std::strtod(bv.c_str(), nullptr);
    since_best = std::atoi(w.metadata["since_best"].c_str());
    if (main_rank) truncate_metrics(hist, epoch);
    log_info("resumed " + cfg.out + " after epoch " + std::to_string(epoch));
  } else if (main_rank) {
    std::filesystem::remove(hist);
  }
  BatchPlan plan(N, cfg.batch, cfg.seed);
  Progress prog("classify", total_steps, "step", epoch * steps_per_epoch);
  auto t0 = std::chrono::steady_clock::now();
  int64_t seen = 0;
  for (; epoch < cfg.epochs; ++epoch) {
    torch::manual_seed(
        derive_seed(cfg.seed, Stream::kClsDropout, epoch));  // dropout: same stream after a resume
    model->train();
    double loss_sum = 0;
    for (int64_t b = 0; b < steps_per_epoch; ++b) {
      const int64_t step = epoch * steps_per_epoch + b;
      set_lr(opt, warmup_cosine_lr(cfg.lr, cfg.warmup_epochs * steps_per_epoch, total_steps, 0.01,
                                   step));
      auto idx = plan.at(step);
      Tensor x;
      if (cfg.shift_augment > 0) {  // acquisition shifts on the 8-bit images, then the rest
        std::mt19937_64 srng(derive_seed(cfg.seed, Stream::kClsShift, step));
        std::uniform_real_distribution<double> U(0, 1);
        std::vector<cv::Mat> shifted;
        std::vector<const uint8_t*> px;
        for (auto i : idx) {
          const uint8_t* p = train.image(i);
          if (U(srng) < cfg.shift_augment) {
            cv::Mat m(train.size, train.size, CV_8UC3, const_cast<uint8_t*>(p));
            shifted.push_back(apply_shift(m, ShiftOptions{}, srng));
            p = shifted.back().data;
          }
          px.push_back(p);
        }
        x = classifier_input(model->config(), px, train.size);  // after the shifts
      } else {
        x = batch_tensor(model->config(), train, idx);
      }
      if (cfg.augment) {
        std::mt19937_64 rng(derive_seed(cfg.seed, Stream::kClsBatches, step));
        std::vector<Tensor> xs;
        for (int64_t i = 0; i < x.size(0); ++i) xs.push_back(augment_lesion(x[i], rng));
        x = torch::stack(xs);
      }
      std::vector<int64_t> y;
      std::vector<float> w;
      for (auto i : idx) {
        y.push_back(target[i]);
        w.push_back(sample_w[i]);
      }
      auto wt = torch::tensor(w, torch::kFloat32), yt = torch::tensor(y, torch::kInt64);
      Tensor loss;
      if (dist) {  // this rank's rows; sum_rows(w ce) / sum_batch(w), summed over the ranks
        const int64_t n = shard_hi - shard_lo;
        auto ws = wt.narrow(0, shard_lo, n);
        loss = classifier_loss(model, x.narrow(0, shard_lo, n), yt.narrow(0, shard_lo, n), ws) *
               (ws.sum() / wt.sum()).to(module_device(*model));
      } else {
        loss = classifier_loss(model, x, yt, wt);
      }
      backward_with_fresh_grads(loss, params);
      if (dist) {  // gradients and the loss, summed over the ranks
        auto lt = loss.detach().reshape({1}).to(torch::kCPU, torch::kFloat32).clone();
        LF_RETURN_IF_ERROR(dist->allreduce_gradients(params, lt, /*mean=*/false));
        loss = lt[0];
      }
      double lv = loss.item<double>();
      if (!std::isfinite(lv))
        return Status::error("classify: loss is " + std::to_string(lv) + " at epoch " +
                             std::to_string(epoch) + " step " + std::to_string(b) +
                             "; stopped (last good weights in " + last + "); try a lower --lr");
      clip_adamw_ema_step(opt, params, 5.0);
      loss_sum += lv;
      seen += static_cast<int64_t>(idx.size());
      char extra[64];
      std::snprintf(extra, sizeof extra, "epoch %d loss %.4f", epoch + 1, lv);
      if (main_rank) prog.update(step + 1, extra);
    }
    // Validation AUC picks the best epoch; a dx model's balanced accuracy over the diagnoses.
    double val_score = std::nan("");
    double minutes =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 60;
    if (dist) LF_RETURN_IF_ERROR(dist->broadcast(buffers));  // rank 0's batch-norm statistics
    if (main_rank && val.count() > 0) {
      if (multi) {
        auto pred = predict_proba(model, val.pixels.data(), val.count(), val.size).argmax(1);
        std::vector<int> pv(pred.data_ptr<int64_t>(), pred.data_ptr<int64_t>() + val.count());
        val_score = multiclass_metrics(pv, val.cls, K).balanced_accuracy;
      } else {
        val_score = roc_auc(predict_malignant(model, val), val.labels);
      }
    }
    if (dist) {  // rank 0's validation and clock decide for every rank
      std::vector<Tensor> d{torch::tensor({val_score, minutes}, torch::kFloat64)};
      LF_RETURN_IF_ERROR(dist->broadcast(d));
      val_score = d[0][0].item<double>();
      minutes = d[0][1].item<double>();
      LF_RETURN_IF_ERROR(dist->check_in_sync(params, "weights"));
    }
    bool improved = !std::isnan(val_score) ? val_score > res.best_val + 1e-6 : true;
    if (improved) {
      res.best_val = std::isnan(val_score) ? 0 : val_score;
      res.best_epoch = epoch + 1;
      since_best = 0;
      if (main_rank)
        LF_RETURN_IF_ERROR(
            save_classifier(best, model, 0.5, {{"epoch", std::to_string(epoch + 1)}}));
    } else {
      ++since_best;
    }
    if (main_rank)
      append_line(
          hist, nlohmann::json{{"step", epoch + 1},
                               {"epoch", epoch + 1},
                               {"train_loss", loss_sum / steps_per_epoch},
                               {res.selected_on, std::isnan(val_score) ? nlohmann::json(nullptr)
                                                                       : nlohmann::json(val_score)}}
                    .dump());
    if (main_rank)
      LF_RETURN_IF_ERROR(commit_checkpoint(
          journal, {{last,
                     [&](const std::string& p) {
                       return save_classifier(p, model, 0.5,
                                              {{"best_epoch", std::to_string(res.best_epoch)},
                                               {"best_val", exact(res.best_val)},
                                               {"selected_on", res.selected_on},
                                               {"since_best", std::to_string(since_best)}});
                     }},
                    {state, [&](const std::string& p) { return save_state(p, epoch + 1, opt); }}}));
    res.epochs_run = epoch + 1;
    if (since_best >= cfg.patience) {
      res.stopped_early = true;
      log_info("early stop after epoch " + std::to_string(epoch + 1) + " (best " +
               std::to_string(res.best_epoch) + ")");
      break;
    }
    if (cfg.max_minutes > 0 && minutes >= cfg.max_minutes) {
      log_info("classify: time budget reached after epoch " + std::to_string(epoch + 1));
      break;
    }
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.images_per_second = seen / std::max(res.seconds, 1e-9);
  if (dist) {
    LF_RETURN_IF_ERROR(dist->barrier());  // rank 0 has written best.safetensors
    if (!main_rank) return res;           // the evaluation is rank 0's
  }
  // Best weights back; operating point on validation.
  LF_ASSIGN_OR_RETURN(SafeTensors bw, load_safetensors(best));
  LF_RETURN_IF_ERROR(load_module_tensors(bw, *model, best));
  if (val.count() > 0) {
    const std::vector<double> vs = predict_malignant(model, val);
    res.threshold = youden_threshold(vs, val.labels);
    res.platt = fit_platt(vs, val.labels);
  }
  LF_RETURN_IF_ERROR(save_classifier(best, model, res.threshold,
                                     {{"epoch", std::to_string(res.best_epoch)},
                                      {res.selected_on, exact(res.best_val)},
                                      {"train", cfg.to_json().dump()}},
                                     res.platt));
  prog.finish(res.stopped_early ? "(early stop)" : "",
              res.epochs_run > 0 ? static_cast<int64_t>(res.epochs_run) * steps_per_epoch : -1);
  return res;
}

}  // namespace lf
