#include <algorithm>
#include <cstdio>

#include "lesionflow/io.h"

namespace lf {

int CsvTable::column(const std::string& name) const {
  for (size_t i = 0; i < header.size(); ++i)
    if (header[i] == name) return static_cast<int>(i);
  return -1;
}

std::string csv_escape(const std::string& f) {
  if (f.find_first_of(",\"\n\r") == std::string::npos) return f;
  std::string out = "\"";
  for (char c : f) {
    if (c == '"')
      out += "\"\"";
    else
      out += c;
  }
  return out + "\"";
}

// Byte offset of the first invalid UTF-8 sequence, or npos.
size_t invalid_utf8_at(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || (n == 2 && c < 0xC2) || i + n > s.size()) return i;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return i;
    i += n;
  }
  return std::string::npos;
}

Result<CsvTable> read_csv(const std::string& path) {
  LF_ASSIGN_OR_RETURN(std::string text, read_file(path));
  CsvTable t;
  t.path = path;
  if (text.size() >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // BOM
  // Everything downstream (captions, JSON records) needs UTF-8: refuse other encodings here.
  if (size_t bad = invalid_utf8_at(text); bad != std::string::npos) {
    int ln = 1 + static_cast<int>(std::count(text.begin(), text.begin() + bad, '\n'));
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02X", static_cast<unsigned char>(text[bad]));
    return Status::error(path + ":" + std::to_string(ln) + ": not valid UTF-8 (byte " + hex +
                         "); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)");
  }
  std::vector<std::string> row;
  std::string field;
  bool in_quotes = false, field_started = false;
  int line = 1, row_line = 1;
  auto end_row = [&]() -> Status {
    row.push_back(field);
    field.clear();
    bool blank = row.size() == 1 && row[0].empty();
    if (!blank) {
      if (t.header.empty()) {
        t.header = row;
        for (auto& h : t.header) {  // trim spaces
          while (!h.empty() && (h.back() == ' ' || h.back() == '\t')) h.pop_back();
          while (!h.empty() && (h.front() == ' ' || h.front() == '\t')) h.erase(0, 1);
        }
      } else {
        if (row.size() != t.header.size())
          return Status::error(path + ":" + std::to_string(row_line) + ": expected " +
                               std::to_string(t.header.size()) + " fields, found " +
                               std::to_string(row.size()));
        t.rows.push_back(row);
        t.line_numbers.push_back(row_line);
      }
    }
    row.clear();
    return Status::ok_status();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          in_quotes = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (c == '"' && !field_started) {
      in_quotes = field_started = true;
    } else if (c == ',') {
      row.push_back(field);
      field.clear();
      field_started = false;
    } else if (c == '\r') {
      // ignore; handled by \n
    } else if (c == '\n') {
      LF_RETURN_IF_ERROR(end_row());
      field_started = false;
      ++line;
      row_line = line;
    } else {
      field += c;
      field_started = true;
    }
  }
  if (in_quotes)
    return Status::error(path + ":" + std::to_string(row_line) + ": unterminated quoted field");
  if (!field.empty() || !row.empty()) LF_RETURN_IF_ERROR(end_row());
  if (t.header.empty()) return Status::error(path + ": empty CSV file (no header)");
  return t;
}

}  // namespace lf
