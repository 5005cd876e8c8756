/**
 * The `detail` of autoStart's event pattern, over S3's "Object Created" events through EventBridge: an
 * object of `bucketName` under `inputs/<work>/` that holds data. An empty object starts no run: the S3
 * console's "Create folder" writes one (`inputs/<work>/sub/`, 0 bytes), and a run over it would read the
 * folder as a prefix, racing the runs of the objects uploaded into it (the same records paid twice, under
 * other dataset hashes) or failing on an empty prefix; an empty upload would only fail.
 *
 * `anything-but: 0` rather than `numeric: [">", 0]`: EventBridge compares numbers only up to 5e9, and a
 * size above that (a dataset of over 5 GB, from a multipart upload) would not match `> 0` and start
 * nothing, where it is simply not 0. A key ending in `/` cannot be excluded here as well: conditions on one
 * field are alternatives (a prefix OR a suffix), never both; Register refuses the rare one that holds data.
 */
export function startOnUploadDetail(bucketName: string, work: string) {
  return {
    bucket: { name: [bucketName] },
    object: {
      key: [{ prefix: `inputs/${work}/` }],
      size: [{ 'anything-but': 0 }],
    },
  };
}
