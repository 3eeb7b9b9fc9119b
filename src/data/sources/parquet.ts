/**
 * Parquet rows for prep, from a local file or over HTTP range requests alike (both are hyparquet AsyncBuffers):
 * the footer first, then one row group at a time and only the text and id columns, so memory stays at one row group
 * however large the file. Bytes are counted as they are fetched. Text stored as raw bytes is decoded as strict UTF-8.
 */
import { type AsyncBuffer, parquetMetadataAsync, parquetReadObjects, parquetSchema } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { dataError } from '../errors.ts';
import { decodeUtf8 } from './lines.ts';
import type { RecordMaker, SourceRecord } from './source.ts';

function counting(file: AsyncBuffer, onBytes: (n: number) => void): AsyncBuffer {
  return {
    byteLength: file.byteLength,
    async slice(start, end) {
      const buf = await file.slice(start, end);
      onBytes(buf.byteLength);
      return buf;
    },
  };
}

export async function* readParquetRows(
  raw: AsyncBuffer,
  where: string,
  stem: string,
  maker: RecordMaker,
  onBytes: (n: number) => void,
): AsyncGenerator<SourceRecord> {
  const fields = maker.fields;
  const file = counting(raw, onBytes);
  let metadata;
  try {
    metadata = await parquetMetadataAsync(file);
  } catch (err) {
    throw dataError(
      `not a readable parquet file (${(err as Error).message})`,
      where,
      'check that the file is complete and really parquet',
    );
  }
  const columns = parquetSchema(metadata).children.map((c) => c.element.name);
  if (!columns.includes(fields.text)) {
    throw dataError(
      `parquet file has no column "${fields.text}" (columns: ${columns.join(', ')})`,
      where,
      'pick the text column with --text-field',
    );
  }
  const wanted = fields.id !== null && columns.includes(fields.id) ? [fields.text, fields.id] : [fields.text];
  let rowStart = 0;
  for (const group of metadata.row_groups) {
    const rowEnd = rowStart + Number(group.num_rows);
    const rows = await parquetReadObjects({ file, metadata, columns: wanted, rowStart, rowEnd, compressors });
    for (const [i, row] of rows.entries()) {
      const text = row[fields.text];
      if (text instanceof Uint8Array) {
        const decoded = decodeUtf8(text);
        if (decoded === null) {
          yield { kind: 'skip', reason: 'not-utf8', where: `${where}, row ${rowStart + i}` };
          continue;
        }
        row[fields.text] = decoded;
      }
      yield maker.make(row, stem, `${where}, row ${rowStart + i}`);
    }
    rowStart = rowEnd;
  }
}
