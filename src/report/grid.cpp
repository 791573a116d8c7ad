#include <algorithm>
#include <cmath>
#include <cstdio>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <sstream>

#include "lesionflow/io.h"
#include "lesionflow/report.h"

namespace lf {

cv::Mat make_grid(const std::vector<cv::Mat>& tiles, int cols, int pad) {
  if (tiles.empty()) return cv::Mat();
  cols = std::max(1, std::min<int>(cols, tiles.size()));
  int rows = (static_cast<int>(tiles.size()) + cols - 1) / cols;
  int h = tiles[0].rows, w = tiles[0].cols;
  cv::Mat grid(rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, CV_8UC3,
               cv::Scalar(255, 255, 255));
  for (size_t i = 0; i < tiles.size(); ++i) {
    int r = static_cast<int>(i) / cols, c = static_cast<int>(i) % cols;
    cv::Mat t = tiles[i];
    if (t.channels() == 1) cv::cvtColor(t, t, cv::COLOR_GRAY2BGR);
    if (t.rows != h || t.cols != w) cv::resize(t, t, cv::Size(w, h));
    t.copyTo(grid(cv::Rect(pad + c * (w + pad), pad + r * (h + pad), w, h)));
  }
  return grid;
}

std::string png_data_uri(const cv::Mat& bgr) {
  std::vector<uchar> buf;
  cv::imencode(".png", bgr, buf);
  return "data:image/png;base64," + base64_encode(std::string(buf.begin(), buf.end()));
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '&':
        o += "&amp;";
        break;
      case '"':
        o += "&quot;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

std::string svg_line_plot(const std::vector<Series>& series, const std::string& title,
                          const std::string& xlabel, const std::string& ylabel, int W, int H,
                          bool log_y) {
  static const char* kColours[] = {"#1f77b4", "#d62728", "#2ca02c",
                                   "#ff7f0e", "#9467bd", "#8c564b"};
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  auto ty = [&](double y) { return log_y ? std::log10(std::max(y, 1e-12)) : y; };
  for (const auto& s : series)
    for (auto [x, y] : s.points) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, x);
      x1 = std::max(x1, x);
      y0 = std::min(y0, ty(y));
      y1 = std::max(y1, ty(y));
    }
  if (x0 > x1) {
    x0 = 0;
    x1 = 1;
    y0 = 0;
    y1 = 1;
  }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) {
    y1 += 0.5;
    y0 -= 0.5;
  }
  const int L = 60, R = 10, T = 28, B = 42;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (ty(y) - y0) / (y1 - y0) * (H - T - B); };
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
    << "' font-family='sans-serif' font-size='11'>";
  o << "<rect width='100%' height='100%' fill='white'/>";
  o << "<text x='" << W / 2 << "' y='16' text-anchor='middle' font-size='13'>" << html_escape(title)
    << "</text>";
  o << "<line x1='" << L << "' y1='" << H - B << "' x2='" << W - R << "' y2='" << H - B
    << "' stroke='black'/>";
  o << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << H - B
    << "' stroke='black'/>";
  char buf[64];
  for (int i = 0; i <= 4; ++i) {
    double xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    std::snprintf(buf, sizeof buf, "%.3g", xv);
    o << "<text x='" << px(xv) << "' y='" << H - B + 14 << "' text-anchor='middle'>" << buf
      << "</text>";
    std::snprintf(buf, sizeof buf, "%.3g", log_y ? std::pow(10.0, yv) : yv);
    double yy = H - B - (yv - y0) / (y1 - y0) * (H - T - B);
    o << "<text x='" << L - 4 << "' y='" << yy + 4 << "' text-anchor='end'>" << buf << "</text>";
    o << "<line x1='" << L << "' y1='" << yy << "' x2='" << W - R << "' y2='" << yy
      << "' stroke='#eee'/>";
  }
  o << "<text x='" << (L + W - R) / 2 << "' y='" << H - 6 << "' text-anchor='middle'>"
    << html_escape(xlabel) << "</text>";
  o << "<text transform='translate(14," << (T + H - B) / 2 << ") rotate(-90)' text-anchor='middle'>"
    << html_escape(ylabel) << "</text>";
  for (size_t si = 0; si < series.size(); ++si) {
    const char* c = kColours[si % 6];
    o << "<polyline fill='none' stroke='" << c << "' stroke-width='1.5' points='";
    for (auto [x, y] : series[si].points)
      if (std::isfinite(y)) o << px(x) << ',' << py(y) << ' ';
    o << "'/>";
    o << "<text x='" << W - R - 4 << "' y='" << T + 12 + 13 * si << "' text-anchor='end' fill='"
      << c << "'>" << html_escape(series[si].name) << "</text>";
  }
  o << "</svg>";
  return o.str();
}

}  // namespace lf
