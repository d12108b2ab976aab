import { writeFile } from "node:fs/promises";
import { crc32, deflateRawSync } from "node:zlib";

/** One entry repeated by {@link writeRepeatedZip}. */
export interface RepeatedEntry {
  /** How many entries. */
  readonly count: number;
  /** The name of the i-th entry. */
  readonly name: (i: number) => string;
  /** What each entry inflates to. */
  readonly data: Buffer;
  /** The uncompressed size the headers declare; defaults to the truth. A lie makes a zip bomb. */
  readonly declaredSize?: number;
}

/**
 * Writes a zip of `count` deflated entries sharing one compressed body: 10,000 entries of 1 MiB each
 * cost about 10 MB on disk and no time to build, and declare (or hide) 10 GiB.
 */
export async function writeRepeatedZip(path: string, ...groups: RepeatedEntry[]): Promise<number> {
  const local: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  let entries = 0;
  for (const { count, name, data, declaredSize } of groups) {
    const compressed = deflateRawSync(data, { level: 9 });
    const crc = crc32(data);
    const size = declaredSize ?? data.length;
    for (let i = 0; i < count; i++) {
      const fileName = Buffer.from(name(i), "utf8");
      const header = Buffer.alloc(30);
      header.writeUInt32LE(0x04034b50, 0);
      header.writeUInt16LE(20, 4);
      header.writeUInt16LE(8, 8);
      header.writeUInt16LE(0x21, 12);
      header.writeUInt32LE(crc, 14);
      header.writeUInt32LE(compressed.length, 18);
      header.writeUInt32LE(size, 22);
      header.writeUInt16LE(fileName.length, 26);
      local.push(header, fileName, compressed);
      const record = Buffer.alloc(46);
      record.writeUInt32LE(0x02014b50, 0);
      record.writeUInt16LE((3 << 8) | 20, 4);
      record.writeUInt16LE(20, 6);
      record.writeUInt16LE(8, 10);
      record.writeUInt16LE(0x21, 14);
      record.writeUInt32LE(crc, 16);
      record.writeUInt32LE(compressed.length, 20);
      record.writeUInt32LE(size, 24);
      record.writeUInt16LE(fileName.length, 28);
      record.writeUInt32LE((0o100644 << 16) >>> 0, 38);
      record.writeUInt32LE(offset, 42);
      central.push(record, fileName);
      offset += header.length + fileName.length + compressed.length;
      entries += 1;
    }
  }
  const directory = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries, 8);
  end.writeUInt16LE(entries, 10);
  end.writeUInt32LE(directory.length, 12);
  end.writeUInt32LE(offset, 16);
  const zip = Buffer.concat([...local, directory, end]);
  await writeFile(path, zip);
  return zip.length;
}
