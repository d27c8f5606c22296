-- zoo: enclosures, the animals living in them, keepers, and which keeper cares for which animal
CREATE TABLE enclosure (enclosure_id INTEGER PRIMARY KEY, enclosure_name TEXT, habitat TEXT, area INTEGER);
CREATE TABLE animal (animal_id INTEGER PRIMARY KEY, name TEXT, species TEXT, age INTEGER, weight REAL,
                     enclosure_id INTEGER, FOREIGN KEY (enclosure_id) REFERENCES enclosure(enclosure_id));
CREATE TABLE keeper (keeper_id INTEGER PRIMARY KEY, name TEXT, hired_year INTEGER, shift TEXT);
CREATE TABLE care (keeper_id INTEGER, animal_id INTEGER, hours_per_week INTEGER,
                   PRIMARY KEY (keeper_id, animal_id),
                   FOREIGN KEY (keeper_id) REFERENCES keeper(keeper_id),
                   FOREIGN KEY (animal_id) REFERENCES animal(animal_id));
INSERT INTO enclosure VALUES (1,'Savanna','grassland',5000),(2,'Rainforest House','forest',1200),
 (3,'Polar Point','arctic',2500),(4,'Reptile Hall','desert',600),(5,'Aviary','forest',900);
INSERT INTO animal VALUES (1,'Zuri','lion',8,190.0,1),(2,'Kito','lion',5,160.5,1),(3,'Tembo','elephant',30,4100.0,1),
 (4,'Mango','parrot',12,1.1,5),(5,'Kiwi','parrot',3,0.9,5),(6,'Nanuk','polar bear',14,450.0,3),
 (7,'Sesi','python',6,40.0,4),(8,'Rango','iguana',4,4.5,4),(9,'Coco','monkey',9,12.0,2),
 (10,'Lulu','monkey',2,8.5,2),(11,'Pip','penguin',5,25.0,3),(12,'Juno','giraffe',11,800.0,1);
INSERT INTO keeper VALUES (1,'Amara Hill',2010,'day'),(2,'Boris Kain',2015,'night'),(3,'Celia Ruiz',2018,'day'),
 (4,'Dmitri Volk',2021,'day'),(5,'Elsa Moreau',2012,'night'),(6,'Farid Nasser',2024,'day');
INSERT INTO care VALUES (1,1,10),(1,2,10),(1,3,15),(2,6,12),(2,11,8),(3,4,5),(3,5,5),(3,9,7),(3,10,7),
 (4,7,6),(4,8,4),(5,3,10),(5,12,9),(1,12,6);
