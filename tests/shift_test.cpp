// Acquisition-shift transforms and `lesionflow data shift`.
#include "lesionflow/shift.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <opencv2/imgproc.hpp>

#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "test_util.h"

namespace lf {
namespace {

// A dark round lesion of radius r on even skin-coloured background (RGB).
cv::Mat disc_image(int W, int H, int r) {
  cv::Mat m(H, W, CV_8UC3, cv::Scalar(215, 170, 150));
  cv::circle(m, {W / 2, H / 2}, r, cv::Scalar(70, 40, 30), cv::FILLED);
  return m;
}
int dark_pixels(const cv::Mat& m) {
  cv::Mat g;
  cv::cvtColor(m, g, cv::COLOR_RGB2GRAY);
  return cv::countNonZero(g < 80);
}

TEST(Shift, ParsesKindsAndNamesTheKnownOnes) {
  EXPECT_EQ(parse_shift_kinds("all")->size(), 8u);
  auto two = parse_shift_kinds("zoom,hair");
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(*two, (std::vector<ShiftKind>{ShiftKind::kZoomOut, ShiftKind::kHair}));
  auto bad = parse_shift_kinds("zoom,fog");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("unknown shift 'fog'"), std::string::npos);
  EXPECT_NE(bad.status().message().find("vignette"), std::string::npos);
}

TEST(Shift, EveryKindChangesTheImageDeterministicallyAndKeepsItsSize) {
  const cv::Mat img = disc_image(64, 64, 14);
  for (ShiftKind k : all_shift_kinds()) {
    std::mt19937_64 a(7), b(7);
    nlohmann::json pa, pb;
    cv::Mat x = apply_one_shift(img, k, a, &pa), y = apply_one_shift(img, k, b, &pb);
    EXPECT_EQ(x.size(), img.size()) << shift_name(k);
    EXPECT_EQ(x.type(), CV_8UC3) << shift_name(k);
    EXPECT_GT(cv::norm(x, img, cv::NORM_L1), 64.0 * 64 * 0.5) << shift_name(k) << " did nothing";
    EXPECT_EQ(cv::norm(x, y, cv::NORM_INF), 0.0) << shift_name(k) << " is not seed-exact";
    EXPECT_EQ(pa, pb);
    EXPECT_FALSE(pa.empty()) << shift_name(k);
  }
  // apply_shift draws at least min_kinds and records what it did.
  std::mt19937_64 r(3);
  ShiftOptions o;
  o.probability = 0;
  o.min_kinds = 2;
  nlohmann::json applied;
  apply_shift(img, o, r, &applied);
  EXPECT_EQ(applied.size(), 2u) << applied.dump();
}

TEST(Shift, ZoomShrinksTheLesionAreaBySquareOfTheScaleAndSquashMakesAFrameSquare) {
  const cv::Mat img = disc_image(200, 200, 50);
  const int before = dark_pixels(img);
  for (uint64_t seed = 0; seed < 5; ++seed) {
    std::mt19937_64 r(seed);
    nlohmann::json p;
    cv::Mat z = apply_one_shift(img, ShiftKind::kZoomOut, r, &p);
    const double s = p["scale"].get<double>();
    EXPECT_GE(s, 0.4);
    EXPECT_LE(s, 0.75);
    EXPECT_NEAR(dark_pixels(z) / double(before), s * s, 0.15 * s * s) << p.dump();
  }
  // A 4:3 photo becomes a square of its short side: the round lesion becomes an ellipse 3:4.
  const cv::Mat wide = disc_image(400, 300, 60);
  std::mt19937_64 r(1);
  nlohmann::json p;
  cv::Mat sq = apply_one_shift(wide, ShiftKind::kSquash, r, &p);
  EXPECT_EQ(sq.cols, 300);
  EXPECT_EQ(sq.rows, 300);
  EXPECT_NEAR(p["aspect"].get<double>(), 4.0 / 3, 1e-9);
  cv::Mat g;
  cv::cvtColor(sq, g, cv::COLOR_RGB2GRAY);
  cv::Rect bb = cv::boundingRect(g < 80);
  EXPECT_NEAR(double(bb.width) / bb.height, 0.75, 0.05);
}

TEST(Shift, DataShiftWritesAHamFolderThatReadsBackWithTheSameLabels) {
  const std::string dir = test::tmp_dir("data_shift");
  const std::string out = dir + "/shifted";
  auto r = test::run_cli("--seed 3 data shift --dataset ham10000:" + test::data_dir() +
                         "/good --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto orig = load_dataset("ham10000:" + test::data_dir() + "/good");
  auto back = load_dataset("ham10000:" + out);
  ASSERT_TRUE(orig.ok());
  ASSERT_TRUE(back.ok()) << back.status().message();
  ASSERT_EQ(back->records.size(), orig->records.size());
  for (size_t i = 0; i < orig->records.size(); ++i) {
    EXPECT_EQ(back->records[i].id, orig->records[i].id);
    EXPECT_EQ(back->records[i].dx, orig->records[i].dx);
    EXPECT_EQ(back->records[i].label, orig->records[i].label);
    EXPECT_EQ(back->records[i].lesion_id, orig->records[i].lesion_id);
    auto a = read_image(orig->records[i].image_path), b = read_image(back->records[i].image_path);
    ASSERT_TRUE(a.ok() && b.ok());
    if (a->size() == b->size()) EXPECT_GT(cv::norm(*a, *b, cv::NORM_L1), 0.0);
  }
  EXPECT_TRUE(file_exists(out + "/shift.jsonl"));
  // The same seed gives the same files; an existing output folder is refused.
  auto again = test::run_cli("--seed 3 data shift --dataset ham10000:" + test::data_dir() +
                             "/good --out " + dir + "/again");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(*read_file(out + "/shift.jsonl"), *read_file(dir + "/again/shift.jsonl"));
  auto refused =
      test::run_cli("data shift --dataset ham10000:" + test::data_dir() + "/good --out " + out);
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("already exists"), std::string::npos) << refused.output;
  auto bad = test::run_cli("data shift --dataset ham10000:" + test::data_dir() +
                           "/good --shifts fog --out " + dir + "/bad");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("unknown shift 'fog'"), std::string::npos) << bad.output;
  EXPECT_FALSE(std::filesystem::exists(dir + "/bad"));
}

}  // namespace
}  // namespace lf
