# Tile PNG images into one grid (rows given as comma-separated file lists), with numpy only:
#   /usr/bin/python3 scripts/tile_png.py OUT.png a.png,b.png,c.png d.png,e.png,f.png
# (used for the docs grids of synthetic sets; 8-bit RGB/RGBA PNGs).
import zlib, struct, sys, numpy as np
def read_png(p):
    d=open(p,'rb').read(); pos=8; idat=b''; w=h=0
    while pos<len(d):
        n,=struct.unpack('>I',d[pos:pos+4]); t=d[pos+4:pos+8]; c=d[pos+8:pos+8+n]; pos+=12+n
        if t==b'IHDR': w,h,bd,ct=struct.unpack('>IIBB',c[:10])
        elif t==b'IDAT': idat+=c
    raw=zlib.decompress(idat); bpp=3 if ct==2 else 4; stride=w*bpp
    out=np.zeros((h,stride),np.uint8); prev=np.zeros(stride,np.int32)
    i=0
    for y in range(h):
        f=raw[i]; line=np.frombuffer(raw[i+1:i+1+stride],np.uint8).astype(np.int32); i+=1+stride
        cur=np.zeros(stride,np.int32)
        for x in range(stride):
            a=cur[x-bpp] if x>=bpp else 0; b=prev[x]; cc=prev[x-bpp] if x>=bpp else 0
            if f==0: v=line[x]
            elif f==1: v=line[x]+a
            elif f==2: v=line[x]+b
            elif f==3: v=line[x]+(a+b)//2
            else:
                pp=a+b-cc; pa,pb,pc=abs(pp-a),abs(pp-b),abs(pp-cc)
                v=line[x]+(a if pa<=pb and pa<=pc else (b if pb<=pc else cc))
            cur[x]=v&255
        out[y]=cur; prev=cur
    return out.reshape(h,w,bpp)[:,:,:3]
def write_png(p,a):
    h,w,_=a.shape; raw=b''.join(b'\x00'+a[y].tobytes() for y in range(h))
    def ch(t,c): return struct.pack('>I',len(c))+t+c+struct.pack('>I',zlib.crc32(t+c)&0xffffffff)
    open(p,'wb').write(b'\x89PNG\r\n\x1a\n'+ch(b'IHDR',struct.pack('>IIBBBBB',w,h,8,2,0,0,0))+ch(b'IDAT',zlib.compress(raw))+ch(b'IEND',b''))
out=sys.argv[1]; rows=[r.split(',') for r in sys.argv[2:]]
img=np.concatenate([np.concatenate([read_png(f) for f in r],1) for r in rows],0)
write_png(out,img)
