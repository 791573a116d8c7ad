#include "lesionflow/data.h"

#include <map>
#include <opencv2/core.hpp>
#include <set>

#include "lesionflow/io.h"
#include "lesionflow/phantom.h"
#include "test_util.h"

namespace lf {

TEST(Readers, Ham10000SmallLayout) {
  auto ds = read_ham10000(test::data_dir() + "/good", {});
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  ASSERT_EQ(ds->records.size(), 3u);
  EXPECT_EQ(ds->records[0].dx, "mel");
  EXPECT_EQ(ds->records[0].label, 1);
  EXPECT_EQ(ds->records[2].label, 0);
  EXPECT_EQ(ds->records[2].age, -1);
  EXPECT_EQ(ds->records[0].site, "back");
  EXPECT_FALSE(ds->records[0].mask_path.empty());
  auto s = summarize(*ds);
  EXPECT_EQ(s["lesions"], 2);
}

TEST(Readers, IsicLayouts) {
  std::string img = test::data_dir() + "/good/images";
  auto a = load_dataset("isic:" + test::data_dir() + "/isic/isic2017.csv:" + img);
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->records[0].dx, "mel");
  EXPECT_EQ(a->records[1].dx, "bkl");
  EXPECT_EQ(a->records[2].dx, "nv");
  auto b = load_dataset("isic:" + test::data_dir() + "/isic/isic2019.csv:" + img);
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ(b->records[1].dx, "bcc");
  EXPECT_EQ(b->records[1].label, 1);
  EXPECT_EQ(b->records[2].dx, "scc");
  EXPECT_EQ(b->records[2].label, 1);
  auto c = load_dataset("isic:" + test::data_dir() + "/isic/isic2020.csv:" + img);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->records[1].label, 1);
  EXPECT_EQ(c->records[0].patient_id, "IP_1");
  EXPECT_EQ(c->records[0].group_key(), c->records[1].group_key());
  EXPECT_EQ(c->records[2].site, "head/neck");
  EXPECT_EQ(c->records[2].sex, "female");
}

TEST(Readers, ImageFolder) {
  auto ds = load_dataset("folder:" + test::data_dir() + "/folder");
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  ASSERT_EQ(ds->records.size(), 3u);
  EXPECT_EQ(ds->records[0].dx, "mel");
  EXPECT_EQ(ds->records[0].label, 1);
  EXPECT_EQ(ds->records[1].label, 0);
}

TEST(Readers, BadCsvErrorsNameFileLineAndColumn) {
  auto a = read_ham10000(test::data_dir() + "/bad_missing_column", {});
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("HAM10000_metadata.csv: missing required column 'dx'"),
            std::string::npos)
      << a.status().message();
  auto b = read_ham10000(test::data_dir() + "/bad_unknown_dx", {});
  ASSERT_FALSE(b.ok());
  EXPECT_NE(
      b.status().message().find("HAM10000_metadata.csv:3: column 'dx': unknown dx code 'xyz'"),
      std::string::npos)
      << b.status().message();
  auto c = read_ham10000(test::data_dir() + "/bad_missing_image", {});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(
                "HAM10000_metadata.csv:3: column 'image_id': image 'IMG_9999' not found"),
            std::string::npos)
      << c.status().message();
  EXPECT_FALSE(load_dataset("nonsense:x").ok());
}

TEST(Prepare, CorruptImagesAreSkippedAndCounted) {
  auto ds = read_ham10000(test::data_dir() + "/bad", {});
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  PrepareStats st;
  auto ps = prepare(*ds, PrepareConfig{32, FitMode::kCrop, 2}, &st);
  ASSERT_TRUE(ps.ok());
  EXPECT_EQ(st.ok, 1);
  EXPECT_EQ(st.skipped, 4);
  EXPECT_EQ(ps->records[0].id, "IMG_0008");
  ASSERT_EQ(st.skipped_messages.size(), 4u);
  EXPECT_NE(st.skipped_messages[0].find("IMG_0004.jpg"), std::string::npos);
}

TEST(Prepare, CacheRoundTripMatchesPixels) {
  auto ds = read_ham10000(test::data_dir() + "/good", {});
  ASSERT_TRUE(ds.ok());
  for (FitMode fit : {FitMode::kCrop, FitMode::kPad}) {
    PrepareStats st;
    auto ps = prepare(*ds, PrepareConfig{32, fit, 2}, &st);
    ASSERT_TRUE(ps.ok());
    ASSERT_EQ(ps->count(), 3);
    EXPECT_EQ(ps->has_mask[0], 1);
    EXPECT_EQ(ps->has_mask[2], 0);
    // Centre pixel is the dark lesion (RGB order: BGR(40,60,110) -> R=110).
    const uint8_t* c = ps->image(0) + (16 * 32 + 16) * 3;
    EXPECT_NEAR(c[0], 110, 6);
    EXPECT_NEAR(c[2], 40, 6);
    EXPECT_EQ(ps->mask(0)[16 * 32 + 16], 255);
    EXPECT_EQ(ps->mask(0)[0], 0);
    std::string dir = test::tmp_dir("prep");
    ASSERT_TRUE(save_prepared(dir, *ps, st).ok());
    auto back = load_prepared(dir);
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_EQ(back->images, ps->images);
    EXPECT_EQ(back->masks, ps->masks);
    EXPECT_EQ(back->records[1].lesion_id, "HAM_A");
  }
}

TEST(Splits, GroupedStratifiedDeterministic) {
  auto ds = load_dataset("phantom:3000", {}, 5);
  ASSERT_TRUE(ds.ok());
  // Make groups of 1-3 images sharing a lesion id.
  for (size_t i = 0; i < ds->records.size(); ++i)
    ds->records[i].lesion_id = "L" + std::to_string(i / (1 + i % 3));
  for (size_t i = 0; i < ds->records.size(); ++i) {  // one dx per lesion
    ds->records[i].dx = std::hash<std::string>{}(ds->records[i].lesion_id) % 4 == 0 ? "mel" : "nv";
  }
  auto a = make_splits(ds->records, {0.7, 0.1, 0.2, 11});
  auto b = make_splits(ds->records, {0.7, 0.1, 0.2, 11});
  auto c = make_splits(ds->records, {0.7, 0.1, 0.2, 12});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  std::map<std::string, std::set<std::string>> where;
  std::map<std::string, std::map<std::string, int>> cnt;
  std::map<std::string, int> tot;
  for (size_t i = 0; i < a->size(); ++i) {
    where[ds->records[i].lesion_id].insert((*a)[i]);
    cnt[(*a)[i]][ds->records[i].dx]++;
    tot[(*a)[i]]++;
  }
  for (auto& [l, s] : where) EXPECT_EQ(s.size(), 1u) << l;
  EXPECT_NEAR(tot["train"] / 3000.0, 0.7, 0.01);
  EXPECT_NEAR(tot["test"] / 3000.0, 0.2, 0.01);
  double mel_train = double(cnt["train"]["mel"]) / tot["train"];
  for (const char* s : {"val", "test"})
    EXPECT_NEAR(double(cnt[s]["mel"]) / tot[s], mel_train, 0.01);
}

TEST(Splits, ScarcitySubsetHasRequestedSizeAndRatio) {
  auto ds = load_dataset("phantom:2000", {}, 1);
  ASSERT_TRUE(ds.ok());
  std::vector<size_t> pool(2000);
  for (size_t i = 0; i < pool.size(); ++i) pool[i] = i;
  auto s = scarcity_subset(ds->records, pool, 200, 0.25, 3);
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(s->size(), 200u);
  int pos = 0;
  for (size_t i : *s) pos += ds->records[i].label == 1;
  EXPECT_EQ(pos, 50);
  EXPECT_EQ(*s, *scarcity_subset(ds->records, pool, 200, 0.25, 3));
  EXPECT_FALSE(scarcity_subset(ds->records, pool, 1900, 0.9, 3).ok());
}

// ---- phantoms: what was asked is what the pixels and mask show ----

TEST(Phantom, ColoursAskedForArePresentAndOthersAbsent) {
  for (uint32_t mask_bits : {0b000100u, 0b101000u, 0b111111u, 0b010110u, 0b000011u}) {
    PhantomParams p;
    p.colours = mask_bits;
    p.diameter = 0.6;
    p.seed = mask_bits;
    cv::Mat rgb, mask;
    render_phantom(p, 64, &rgb, &mask);
    int counts[kNumColours] = {0};
    int lesion = 0;
    for (int y = 0; y < 64; ++y)
      for (int x = 0; x < 64; ++x) {
        if (!mask.at<uint8_t>(y, x)) continue;
        ++lesion;
        auto px = rgb.at<cv::Vec3b>(y, x);
        int best = 0;
        double bd = 1e9;
        for (int c = 0; c < kNumColours; ++c) {
          auto ref = colour_rgb(c);
          double d = 0;
          for (int k = 0; k < 3; ++k) d += (px[k] - ref[k]) * double(px[k] - ref[k]);
          if (d < bd) {
            bd = d;
            best = c;
          }
        }
        counts[best]++;
      }
    ASSERT_GT(lesion, 500);
    for (int c = 0; c < kNumColours; ++c) {
      bool asked = mask_bits & (1u << c);
      if (asked)
        EXPECT_GT(counts[c], lesion / 20) << colour_names()[c];
      else
        EXPECT_EQ(counts[c], 0) << colour_names()[c];
    }
  }
}

// Mirror the mask about its principal axes; count axes whose mirror mismatch exceeds 5%.
static int asymmetric_axes(const cv::Mat& mask) {
  double m00 = 0, m10 = 0, m01 = 0;
  for (int y = 0; y < mask.rows; ++y)
    for (int x = 0; x < mask.cols; ++x)
      if (mask.at<uint8_t>(y, x)) {
        m00++;
        m10 += x;
        m01 += y;
      }
  double cx = m10 / m00, cy = m01 / m00, mu20 = 0, mu02 = 0, mu11 = 0;
  for (int y = 0; y < mask.rows; ++y)
    for (int x = 0; x < mask.cols; ++x)
      if (mask.at<uint8_t>(y, x)) {
        mu20 += (x - cx) * (x - cx);
        mu02 += (y - cy) * (y - cy);
        mu11 += (x - cx) * (y - cy);
      }
  double th = 0.5 * std::atan2(2 * mu11, mu20 - mu02);
  int n = 0;
  for (double ax : {th, th + M_PI / 2}) {
    double c = std::cos(2 * ax), s = std::sin(2 * ax);
    int mism = 0;
    for (int y = 0; y < mask.rows; ++y)
      for (int x = 0; x < mask.cols; ++x) {
        if (!mask.at<uint8_t>(y, x)) continue;
        double dx = x - cx, dy = y - cy;
        int rx = static_cast<int>(std::lround(cx + c * dx + s * dy)),
            ry = static_cast<int>(std::lround(cy + s * dx - c * dy));
        bool in =
            rx >= 0 && ry >= 0 && rx < mask.cols && ry < mask.rows && mask.at<uint8_t>(ry, rx);
        mism += !in;
      }
    n += mism > 0.05 * m00;
  }
  return n;
}

TEST(Phantom, AsymmetryAskedForIsWhatTheMaskShows) {
  int correct = 0, total = 0;
  for (int axes = 0; axes <= 2; ++axes)
    for (int s = 0; s < 20; ++s) {
      PhantomParams p;
      p.asymmetry_axes = axes;
      p.irregularity = 0.1 * (s % 4);
      p.diameter = 0.5 + 0.01 * s;
      p.rotation = 0.3 * s;
      p.seed = 100 * axes + s;
      cv::Mat rgb, mask;
      render_phantom(p, 128, &rgb, &mask);
      int got = asymmetric_axes(mask);
      if (got != axes) std::printf("asked %d got %d irr %.1f\n", axes, got, p.irregularity);
      correct += got == axes;
      ++total;
    }
  EXPECT_GE(correct, total * 9 / 10) << correct << "/" << total;
}

TEST(Phantom, DiameterAndDeterminism) {
  PhantomParams p;
  p.diameter = 0.5;
  cv::Mat a, ma, b, mb;
  render_phantom(p, 64, &a, &ma);
  render_phantom(p, 64, &b, &mb);
  EXPECT_EQ(cv::norm(a, b, cv::NORM_INF), 0);
  double area = cv::countNonZero(ma);
  double eq_diam = 2 * std::sqrt(area / M_PI) / 64;
  EXPECT_NEAR(eq_diam, 0.5, 0.06);
  // Label rule documented in phantom.h.
  p.asymmetry_axes = 2;
  p.colours = 0b111100;
  p.irregularity = 0.5;
  EXPECT_DOUBLE_EQ(p.tds(), 1.3 * 2 + 0.1 * 4 + 0.5 * 4);
  EXPECT_EQ(p.label(), 1);
}

TEST(Phantom, DatasetHasBothClassesAndGroundTruth) {
  auto ds = load_dataset("phantom:500", {}, 0);
  ASSERT_TRUE(ds.ok());
  int pos = 0;
  for (auto& r : ds->records) {
    pos += r.label;
    EXPECT_EQ(r.label, PhantomParams::from_json(r.extra["phantom"]).label());
  }
  EXPECT_GT(pos, 50);
  EXPECT_LT(pos, 400);
  PrepareStats st;
  auto ps = prepare(*ds, PrepareConfig{64, FitMode::kCrop, 2}, &st);
  ASSERT_TRUE(ps.ok());
  EXPECT_EQ(st.ok, 500);
  EXPECT_EQ(ps->has_mask[0], 1);
}

// ---- the real HAM10000 copy in ../shared/data (label "data") ----

TEST(HamData, CountsMatchThePublishedDataset) {
  if (!test::have_ham()) GTEST_SKIP() << "no " << test::ham_dir();
  auto ds = load_dataset("ham10000:" + test::ham_dir());
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  auto s = summarize(*ds);
  EXPECT_EQ(s["images"], 10015);
  EXPECT_EQ(s["lesions"], 7470);
  EXPECT_EQ(s["dx"]["nv"], 6705);
  EXPECT_EQ(s["dx"]["mel"], 1113);
  EXPECT_EQ(s["dx"]["bkl"], 1099);
  EXPECT_EQ(s["dx"]["bcc"], 514);
  EXPECT_EQ(s["dx"]["akiec"], 327);
  EXPECT_EQ(s["dx"]["vasc"], 142);
  EXPECT_EQ(s["dx"]["df"], 115);
  EXPECT_EQ(s["label"]["malignant"], 1954);
  EXPECT_EQ(s["with_mask"], 10015);
}

TEST(HamData, SplitHasNoLesionInTwoSplitsAndBalancedClasses) {
  if (!test::have_ham()) GTEST_SKIP();
  auto ds = load_dataset("ham10000:" + test::ham_dir());
  ASSERT_TRUE(ds.ok());
  auto sp = make_splits(ds->records, {0.7, 0.1, 0.2, 0});
  ASSERT_TRUE(sp.ok());
  std::map<std::string, std::set<std::string>> where;
  std::map<std::string, std::map<std::string, int>> cnt;
  std::map<std::string, int> tot;
  for (size_t i = 0; i < sp->size(); ++i) {
    where[ds->records[i].lesion_id].insert((*sp)[i]);
    cnt[(*sp)[i]][ds->records[i].dx]++;
    tot[(*sp)[i]]++;
  }
  for (auto& [l, s] : where) ASSERT_EQ(s.size(), 1u) << "lesion " << l << " in two splits";
  for (const char* dx : {"nv", "mel", "bkl", "bcc", "akiec", "vasc", "df"}) {
    double f = double(cnt["train"][dx]) / tot["train"];
    for (const char* s : {"val", "test"})
      EXPECT_NEAR(double(cnt[s][dx]) / tot[s], f, 0.01) << dx << " " << s;
  }
  std::string dir = test::tmp_dir("hamsplit");
  ASSERT_TRUE(write_splits(dir + "/a.csv", ds->records, *sp).ok());
  ASSERT_TRUE(
      write_splits(dir + "/b.csv", ds->records, *make_splits(ds->records, {0.7, 0.1, 0.2, 0}))
          .ok());
  EXPECT_EQ(*read_file(dir + "/a.csv"), *read_file(dir + "/b.csv"));
  auto test_idx = select_split(ds->records, dir + "/a.csv", "test");
  ASSERT_TRUE(test_idx.ok());
  EXPECT_EQ(static_cast<int>(test_idx->size()), tot["test"]);
}

TEST(HamData, PrepareAllAt64AndReloadPixels) {
  if (!test::have_ham()) GTEST_SKIP();
  auto ds = load_dataset("ham10000:" + test::ham_dir());
  ASSERT_TRUE(ds.ok());
  PrepareStats st;
  auto ps = prepare(*ds, PrepareConfig{64, FitMode::kCrop, 2}, &st);
  ASSERT_TRUE(ps.ok());
  EXPECT_EQ(st.ok, 10015);
  EXPECT_EQ(st.skipped, 0);
  EXPECT_LT(st.seconds, 60.0);
  std::string dir = test::tmp_dir("hamprep");
  ASSERT_TRUE(save_prepared(dir, *ps, st).ok());
  auto back = load_prepared(dir);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->images, ps->images);
  // Mask coverage sane: lesions cover between 1% and 100% of the crop on average.
  double cover = 0;
  for (int64_t i = 0; i < back->count(); ++i)
    cover += cv::countNonZero(cv::Mat(64, 64, CV_8UC1, (void*)back->mask(i))) / 4096.0;
  cover /= back->count();
  EXPECT_GT(cover, 0.05);
  EXPECT_LT(cover, 0.8);
}

}  // namespace lf
