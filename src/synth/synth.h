// Synthetic training sets: plan how many images per class x subgroup cell to generate, draw
// prompts from the real captions of that cell, generate (resumably) with a provenance record
// per image.
#pragma once
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lesionflow/data.h"
#include "lesionflow/status.h"
#include "train/generator.h"

namespace lf {

struct SynthPlanConfig {
  int64_t total = 1000;  // synthetic images to generate
  // label | dx: equal numbers per class in the synthetic set; fill-label | fill-dx: give the
  // images to the classes short of real ones so real + synthetic is balanced; none: one class;
  // real: one class with the cells of the real training split in their own proportions (flatten
  // 1): the set to compare with real images when fidelity (HAM-FD) is the question.
  std::string balance = "label";
  double flatten = 0.5;  // within a class, cell share ~ real_count^flatten (0 = uniform)
  std::vector<std::string> attributes{"sex", "age"};  // subgroup attributes of a cell
  // Prompt attributes drawn anew per image instead of kept from the source caption, for variety
  // the real cells lack: "size" (small / medium-sized / large lesion, uniform) and "skin"
  // (Fitzpatrick type I-VI, uniform). The manifest records what was asked ("varied").
  std::vector<std::string> vary;
  // Phrases taken out of every prompt (without_phrases), e.g. a structure that the generator's
  // training captions did not use in today's sense (see prompt_phrase_drift).
  std::vector<std::string> omit;
  // Which real lesions of a cell lend their captions. "none": uniformly. "abcd-discordant": toward
  // the lesions the ABCD rule gets wrong, weight exp(emphasis_strength * z) with z the source's
  // TDS standardised over the labelled training captions that have one, negated for malignant
  // lesions: featureless malignant lesions and atypical-looking benign ones, the cases at the
  // triage end of the ROC. "abcd-discordant-malignant": the malignant sources only, benign ones
  // uniformly. Captions without a measured TDS get z = 0. The plan summary records the mean source
  // TDS per class against the real class's.
  std::string emphasis = "none";
  double emphasis_strength = 1.0;
  uint64_t seed = 0;
  nlohmann::json to_json() const;
};

struct SynthItem {
  int64_t index = 0;
  std::string id;      // synth_000123
  std::string prompt;  // a real caption of the cell
  std::string dx;
  int label = -1;
  std::map<std::string, std::string> subgroup;
  std::string source_id;  // the real image whose caption is the prompt
  nlohmann::json asked;   // measured concepts of that caption (for concept adherence)
  nlohmann::json varied;  // attribute -> phrase put into the prompt by SynthPlanConfig::vary
  uint64_t seed = 0;      // noise seed of this image
};

// Cells from the real training records; class totals equal (or, fill-*, water-filling: the
// class with the fewest real + planned images gets the next one), cells within a class weighted by
// real_count^flatten, rounding by largest remainder; all deterministic for the seed.
// captions: id -> captions.jsonl record (prompt = its "caption"); records without one get a
// caption composed from metadata.
Result<std::vector<SynthItem>> plan_synthetic(const std::vector<Record>& real,
                                              const std::map<std::string, nlohmann::json>& captions,
                                              const SynthPlanConfig& cfg, nlohmann::json* summary);

// The structure phrases of `prompts` against the generator's training captions (its checkpoint
// metadata "caption_profile", written by `train`): {"prompts": profile, "training": profile or
// null, "drifted": [{"phrase", "prompts", "training"}]}. A phrase drifts when the prompts use it
// more than twice as often as the training captions plus 2 points: the captions were made by a
// newer detector than the generator learned the phrase from (shipped v3 on today's captions:
// "pigment network" in 11% of prompts, HAM-FD 1.01 against 0.85 with it omitted).
nlohmann::json prompt_phrase_drift(const std::map<std::string, std::string>& generator_metadata,
                                   const std::vector<std::string>& prompts);

// Whether `attribute` is one SynthPlanConfig::vary takes ("size", "skin").
bool is_vary_attribute(const std::string& attribute);
// The values SynthPlanConfig::emphasis takes ("none", "abcd-discordant",
// "abcd-discordant-malignant"), and whether `emphasis` is one of them.
const std::vector<std::string>& emphasis_modes();
bool is_emphasis(const std::string& emphasis);
// The prompt with its phrase for `attribute` ("size" or "skin") replaced by `phrase` (appended
// when the prompt has none).
std::string with_attribute(const std::string& prompt, const std::string& attribute,
                           const std::string& phrase);

// The starting image of an item for image-to-image synthesis: its source record's image under the
// dihedral transform k (0..7), in the generator's space ([C,S,S] latent or pixels in [-1,1]).
using InitImageFn = std::function<torch::Tensor(const SynthItem& item, int k)>;

struct SynthGenConfig {
  GenerateConfig gen;  // sampler, steps, cfg scale, batch; gen.sampler.start < 1: image-to-image
  std::string out;     // DIR: images/*.png, manifest.jsonl, plan.json
  std::string generator_path, adapter_hash;
  InitImageFn init;  // required when gen.sampler.start < 1
  // Latent generators: also write each image's normalised latent (before decoding) to
  // latents/<id>.safetensors (tensor "latent" [C,s,s] fp32, metadata latent_hash), e.g. for
  // `ae train --gen-latents`.
  bool save_latents = false;
  // Per-diagnosis variants of the generator (synth --adapter-for DX=FILE[:S], experiment
  // synth.adapters): the items of a dx in `variant_tag` are made by its variant and record its tag
  // as their adapter_hash (the others: the base, adapter_hash). generate_synthetic makes one
  // variant's items at a time and calls use_variant(dx) before each group ("" = the base, also
  // called at the end); the caller owns what it switches (e.g. a LoRA runtime). An image's noise
  // depends on its seed alone, so the grouping does not change the images.
  std::map<std::string, std::string> variant_tag;
  std::function<Status(const std::string& dx)> use_variant;
};
// The source images of a prepared cache as starting images for `g` (latents from the cache's
// latent file, encoded on first use, for a latent generator). Fails when the cache's image size
// does not match the generator. The returned function reads `ps`, which must outlive it.
Result<InitImageFn> source_images(LoadedGenerator& g, const std::string& prepared_dir,
                                  const PreparedSet& ps);
// The dihedral transform an item's starting image gets (from its seed).
int init_transform(const SynthItem& item);
// Generates every planned item not yet in DIR/manifest.jsonl (resumable: an interrupted run
// continues where it stopped and produces the same images). Returns the number generated now.
Result<int64_t> generate_synthetic(LoadedGenerator& g, const std::vector<SynthItem>& plan,
                                   const SynthGenConfig& cfg, const nlohmann::json& plan_summary);

// The synthetic set in DIR (manifest.jsonl + images/) in a layout other tools read.
//   "imagefolder": OUT/<dx>/<id>.png (torchvision ImageFolder; dx "unk" goes to OUT/malignant or
//                  OUT/benign by label) and OUT/provenance.csv (root files are not classes);
//   "ham":         OUT/images/<id>.png and OUT/HAM10000_metadata.csv with image_id, lesion_id
//                  ("syn_" + the source image: images from one caption stay in one split),
//                  dx, dx_type = synthetic, age, sex, localization (of the source record when
//                  `sources` has it, else sex from the subgroup and age/site unknown), prompt,
//                  seed, source_id.
// Written into a temporary directory renamed into place at the end; OUT must not exist yet.
Result<nlohmann::json> export_synthetic(const std::string& dir, const std::string& format,
                                        const std::string& out,
                                        const std::map<std::string, Record>& sources);

}  // namespace lf
