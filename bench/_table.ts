/** Markdown tables for the benchmark reports. */

/** A markdown table: the first row is the header; the first column is left-aligned, the rest right-aligned. */
export function markdownTable(rows: readonly (readonly string[])[]): string {
  const header = rows[0];
  if (!header) return "";
  const widths = header.map((_, column) =>
    Math.max(3, ...rows.map((row) => (row[column] ?? "").length))
  );
  const line = (row: readonly string[]) =>
    `| ${
      widths.map((width, column) => {
        const cell = row[column] ?? "";
        return column === 0 ? cell.padEnd(width) : cell.padStart(width);
      }).join(" | ")
    } |`;
  const separator = `|${
    widths.map((width, column) =>
      column === 0 ? `:${"-".repeat(width + 1)}` : `${"-".repeat(width + 1)}:`
    ).join("|")
  }|`;
  return [line(header), separator, ...rows.slice(1).map(line)].join("\n");
}
